"""Run the real ``corral serve`` as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from corral.scheduler.launch import free_port


class CorralServer:
    def __init__(self, home: Path, fake_engine: bool = False, **settings: Any) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "server.log"
        self.env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_PORT": str(self.port)}
        self.env.update({"CORRAL_THREADS": "1", "CORRAL_DEMO_MODEL": "0"})
        self.env.update({f"CORRAL_{k.upper()}": str(v) for k, v in settings.items()})
        if fake_engine:  # the test-only engine, added the way any extra engine is
            self.env["CORRAL_ENGINES"] = "tests.support.fake_engine:descriptor"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 60.0) -> CorralServer:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral serve exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"corral serve did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = httpx.get(self.url + "/health").json()["workers"]
        return workers

    def worker(self, model: str) -> dict[str, Any]:
        return next(w for w in self.workers() if w["model"] == model)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a pid; it holds no memory and counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before or while reading
        return False


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
