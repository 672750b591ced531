"""One worker OS process: start it, know when it is ready, stop it, remember its last words.

State machine (``WorkerState``)::

    starting --(answers /health)--> ready --(drain)--> draining --> stopping --> stopped
        |                             |  ^-----(undrain)---'               ^
        |                             +-----------(stop: idle, evicted)----'
        +--(exits / times out)--------+--(exits on its own)--> failed

(and, for engines with a sleep mode: ready --> falling_asleep --> sleeping --> waking
--> ready, all the scheduler's: the process runs throughout)

(``draining`` is the scheduler's: the process keeps serving what it has, and gets
nothing new.)

The process runs in its own process group (so stopping it also stops anything it
spawned) with a pipe on its stdin (so it exits by itself if the gateway dies, even by
kill -9). Its output goes to a log file and a ring buffer: when it fails, the last
lines travel with the error, so users see *why* a model failed to load or crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from corral.errors import EngineLoadError, PortTaken
from corral.protocol.upstream import ForeignServer
from corral.scheduler.sockets import tree_listens

log = logging.getLogger("corral.scheduler")
TAIL_LINES = 40


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    # The scheduler's, for engines that can sleep (vLLM's sleep mode): the process stays,
    # its weights go to RAM and its GPU memory is freed; waking takes seconds, not a load.
    FALLING_ASLEEP = "falling_asleep"
    SLEEPING = "sleeping"
    WAKING = "waking"


@dataclass(frozen=True)
class WorkerSpec:
    """How to run one worker: the command, and where it will answer."""

    model: str
    argv: tuple[str, ...]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)  # added to the gateway's own
    health_path: str = "/health"  # answers 200 once the model is loaded
    start_timeout: float | None = None  # None: the server's worker_start_timeout
    foreign: ForeignServer | None = None  # someone else's OpenAI server (upstream.py)
    sleep_path: str | None = None  # POST: free the GPU, keep the process (sleep mode)
    wake_path: str | None = None  # POST: take the GPU back

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class WorkerProcess:
    def __init__(self, spec: WorkerSpec, log_path: Path | None = None) -> None:
        self.spec = spec
        self.state = WorkerState.STARTING
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.returncode: int | None = None
        self._log_path = log_path
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._exited = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._exited.is_set()

    def gone(self) -> bool:
        """Has the process exited, even if that has not been noticed yet? A request
        sent to it now could not be taken, so it may safely go to a new worker."""
        if self._proc is None or self._exited.is_set():
            return True
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, self._proc.pid, flags) is not None
        except ChildProcessError:
            return True  # reaped already by the child watcher
        except (OSError, AttributeError):  # no waitid here: only what was noticed counts
            return False

    def tail(self, lines: int = 15) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def exit_summary(self) -> str:
        """How it ended, for a crash report: "exit code 1"."""
        return f"exit code {self.returncode}"

    async def wait(self) -> None:
        """Until the process has exited, for whatever reason."""
        await self._exited.wait()

    async def wait_exited(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), timeout)
        return self._exited.is_set()

    # --- starting ------------------------------------------------------------------

    async def start(self, session: aiohttp.ClientSession, timeout: float) -> None:
        """Spawn the process and wait until it answers its health check (``timeout``
        unless the spec sets its own)."""
        timeout = self.spec.start_timeout or timeout
        if self._log_path:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.spec.env} if self.spec.env else None,
        )
        log.info("worker for %s started (pid %s)", self.spec.model, self._proc.pid)
        self._tasks = [
            asyncio.create_task(self._read_output()),
            asyncio.create_task(self._wait_exit()),
        ]
        try:
            await self._wait_ready(session, timeout)
        except BaseException:
            await self.stop(grace=1.0)
            raise
        self.state = WorkerState.READY
        self.ready_at = time.time()

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float) -> None:
        """Until it answers its health check again (after waking); EngineLoadError if it
        exits or does not within ``timeout``."""
        await self._wait_ready(session, timeout)

    async def _wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited.is_set():
                await self._drain_output()
                raise EngineLoadError(
                    f"The worker for '{self.spec.model}' exited with code {self.returncode} "
                    f"while loading. Its last output:\n{self.tail()}"
                )
            if await self._healthy(session):
                if not await asyncio.to_thread(self._listens_on_its_port):
                    raise PortTaken(
                        f"Port {self.spec.port} for '{self.spec.model}' is answered by "
                        "another process (address already in use)"
                    )
                return
            await asyncio.sleep(0.05)
        raise EngineLoadError(
            f"The worker for '{self.spec.model}' did not become ready within {timeout:.0f} s. "
            f"Its last output:\n{self.tail()}"
        )

    def _listens_on_its_port(self) -> bool:
        """Is the server that answered the health check ours? (Only our process
        tree is looked at: cheap.)"""
        return self._proc is not None and tree_listens(self._proc.pid, self.spec.port)

    async def _healthy(self, session: aiohttp.ClientSession) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=2.0)
            url = self.base_url + self.spec.health_path
            async with session.get(url, timeout=timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        logfile = self._log_path.open("ab") if self._log_path else None
        try:
            async for line in self._proc.stdout:
                text = line.decode(errors="replace").rstrip()
                self._tail.append(text)
                if logfile:
                    logfile.write(line)
                    logfile.flush()
        finally:
            if logfile:
                logfile.close()

    async def _drain_output(self) -> None:
        """Let the reader take the dead process's last lines (bounded: a pipe held open
        by anything else must not delay the exit)."""
        await asyncio.wait(self._tasks[:1], timeout=1.0)

    async def _wait_exit(self) -> None:
        assert self._proc is not None
        self.returncode = await self._proc.wait()
        if self.state not in (WorkerState.STOPPING, WorkerState.STOPPED):
            self.state = WorkerState.FAILED
            await self._drain_output()
            log.warning(
                "worker for %s (pid %s) exited with code %s; its last output:\n%s",
                self.spec.model,
                self._proc.pid,
                self.returncode,
                self.tail(),
            )
        self._exited.set()

    # --- stopping ------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it."""
        if self._proc is None:
            self.state = WorkerState.STOPPED
            return
        if self.state != WorkerState.FAILED:
            self.state = WorkerState.STOPPING
        if not self._exited.is_set():
            self._signal_group(signal.SIGTERM)
            if not await self.wait_exited(grace):
                log.warning("worker for %s ignored SIGTERM; killing it", self.spec.model)
                self._signal_group(signal.SIGKILL)
                await self.wait_exited(5.0)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.state == WorkerState.STOPPING:
            self.state = WorkerState.STOPPED

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
