"""Keep someone else's server from outliving the gateway.

    python -m corral.worker.supervise [--grace SECONDS] -- ARGV...

The gateway starts every worker in a process group of its own with a pipe on its
stdin, and stops it by signalling that group. Corral's own worker also exits when its
stdin closes, which is how it never outlives a gateway killed with kill -9. A foreign
server (``llama-server``, ``vllm serve``) ignores its stdin, so it would be orphaned,
holding its port and its GPU memory. This supervisor is its parent:

- the kernel sends the supervisor SIGTERM when the gateway dies (Linux's
  ``PR_SET_PDEATHSIG``), and it watches its stdin for EOF (the same event, seen on
  any system);
- the server runs with ``PR_SET_PDEATHSIG = SIGKILL`` against the supervisor, so even
  a supervisor killed by SIGKILL takes the server with it;
- either way it stops everything in its process group (the server and whatever the
  server started: vLLM's engine processes), SIGTERM first, SIGKILL after ``--grace``.

It exits with the server's exit code (128 + the signal, if a signal ended it), so the
gateway's crash report names the server's own death, and the server's output goes
straight to the gateway's pipe: the supervisor adds one line when it stops the server.
Standard library only, so that it starts in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1
EXIT_NO_COMMAND = 2
EXIT_PARENT_GONE = 3


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A ``preexec_fn``-shaped call: this process gets ``sig`` when its parent dies
    (Linux only; elsewhere the stdin watch is what remains)."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return arm


def say(message: str) -> None:
    """One line to the gateway's log. Its pipe is gone when the gateway died, and a
    write to it must not stop the supervisor before it has stopped the server."""
    with contextlib.suppress(OSError):
        print(f"corral supervise: {message}", file=sys.stderr, flush=True)


def group_members(group: int) -> list[int]:
    """The other processes in process group ``group`` (from /proc; where there is no
    /proc, none are known and only the server itself is stopped)."""
    members = []
    me = os.getpid()
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != me:
                with contextlib.suppress(OSError):
                    if os.getpgid(int(entry.name)) == group:
                        members.append(int(entry.name))
    return members


class Supervisor:
    def __init__(self, argv: Sequence[str], grace: float) -> None:
        self.argv = list(argv)
        self.grace = grace
        self.stop_reason: str | None = None
        self._stopping = threading.Event()

    def run(self) -> int:
        parent = os.getppid()
        parent_death_signal(signal.SIGTERM)()
        if os.getppid() != parent:  # the gateway died before the signal was armed
            return EXIT_PARENT_GONE
        if os.getpgrp() != os.getpid():  # run by hand: a group of our own to clean up
            os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            server = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, preexec_fn=parent_death_signal(signal.SIGKILL)
            )
        except OSError as exc:
            say(f"cannot start {self.argv[0]!r}: {exc}")
            return EXIT_NO_COMMAND
        threading.Thread(target=self._watch_stdin, daemon=True).start()
        while server.poll() is None and not self._stopping.is_set():
            self._stopping.wait(0.2)
        try:
            if server.poll() is None:
                say(f"stopping pid {server.pid} ({self.stop_reason})")
        finally:  # whatever happens, nothing of the group is left behind
            self._stop_group(server)
        code = server.wait()
        return 128 - code if code < 0 else code

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop(f"signal {signal.Signals(signum).name}")

    def _watch_stdin(self) -> None:
        # The raw descriptor: a daemon thread blocked in a buffered read would hold
        # its lock while the interpreter shuts down.
        with contextlib.suppress(OSError):
            while os.read(0, 65536):
                pass
        self._stop("the gateway closed its pipe")

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopping.set()

    def _stop_group(self, server: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the server and everything else in the group, SIGKILL to what is
        left after the grace period. The supervisor is never among them."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        group = os.getpgrp()
        members = set(group_members(group)) | ({server.pid} if server.poll() is None else set())
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            server.poll()
            if not group_members(group) and server.returncode is not None:
                return
            time.sleep(0.05)
        for pid in set(group_members(group)) | ({server.pid} if server.poll() is None else set()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.worker.supervise")
    parser.add_argument("--grace", type=float, default=10.0, help="SIGTERM to SIGKILL, seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the server's argv")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise (put it after --)")
    return Supervisor(command, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
