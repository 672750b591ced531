"""The remote half of a worker placed by Ray: runs inside a Ray actor on some node.

The gateway asks Ray for an actor with the resources the worker needs (CPUs, GPUs,
memory, custom labels); Ray picks the node. This class, in that actor, starts the
worker's command there exactly as the gateway would locally (its own process group,
a pipe on its stdin, output kept), and answers the gateway's questions about it.
Requests never pass through Ray: the gateway talks to the worker over HTTP.

No orphans: the worker's stdin is this actor's pipe. When the actor dies, whether
the gateway stopped it, the gateway died (Ray ends a driver's actors) or the node
was lost, the pipe closes and the worker exits by itself (Corral's worker and
``corral.worker.supervise`` both watch it).

The actor is threaded (``max_concurrency`` > 1): ``wait`` blocks for the worker's
whole life while the other calls are answered. Standard library and psutil only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.scheduler.memory import process_tree
from corral.scheduler.sockets import tree_listens

TAIL_LINES = 40


class WorkerHost:
    """One worker process on this node."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._reader: threading.Thread | None = None

    def where(self) -> tuple[str, int, str]:
        """This node's address (the one its Ray node is known by), a port that was
        free on it a moment ago, and the Ray node's id."""
        import ray

        address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            port = int(sock.getsockname()[1])
        return address, port, ray.get_runtime_context().get_node_id()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: str | None) -> int:
        """Start the worker; its pid on this node."""
        self._proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )
        self._reader = threading.Thread(target=self._read, args=(log_path,), daemon=True)
        self._reader.start()
        return self._proc.pid

    def wait(self) -> tuple[int, str]:
        """Block until the worker exits: its exit code and last output."""
        assert self._proc is not None
        code = self._proc.wait()
        if self._reader is not None:
            self._reader.join(1.0)
        return code, self.tail(TAIL_LINES)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def listens(self, port: int) -> bool:
        """Does the worker's process tree listen on ``port``?"""
        return self._proc is not None and tree_listens(self._proc.pid, port)

    def rss(self) -> int | None:
        """Resident memory of the worker and its children, in bytes."""
        import psutil

        if self._proc is None or self._proc.poll() is not None:
            return None
        try:
            return sum(
                int(psutil.Process(p).memory_info().rss) for p in process_tree(self._proc.pid)
            )
        except psutil.Error:
            return None

    def stop(self, grace: float) -> int | None:
        """SIGTERM the worker's group, SIGKILL after ``grace``; its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                self._signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5.0)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        return proc.poll()

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _read(self, log_path: str | None) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        logfile = None
        if log_path:
            with contextlib.suppress(OSError):  # the log is a convenience, the tail is not
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                logfile = open(log_path, "ab")  # noqa: SIM115 - closed below
        try:
            for line in self._proc.stdout:
                self._tail.append(line.decode(errors="replace").rstrip())
                if logfile is not None:
                    with contextlib.suppress(OSError):
                        logfile.write(line)
                        logfile.flush()
        finally:
            if logfile is not None:
                logfile.close()
