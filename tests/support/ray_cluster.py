"""A real local Ray cluster for tests: ``ray start --head`` and more ``ray start``
nodes on this machine, each with resources of its own, and a way to lose one.

Every node is a raylet of its own (with its own workers), started by Ray's own CLI as
on a real cluster; only the machine is shared. Losing a node kills its raylet and
everything under it with SIGKILL, which is what a dead machine looks like to the rest:
its actors die and Ray marks the node dead (its health checks are made fast here).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

from corral.scheduler.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCK = Path(tempfile.gettempdir()) / "corral-tests-ray.lock"
RAY = Path(sys.executable).parent / "ray"
# A node whose raylet stops answering is dead after ~1.5 s rather than the default ~30 s.
FAST_HEALTH = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    # Less CPU taken from the tests running beside (a fifth of Ray's idle use).
    "RAY_enable_metrics_collection": "0",
}


def missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'corral[ray]')"
    if not RAY.exists():
        return f"no ray command next to {sys.executable}"
    return None


class LocalRay:
    def __init__(self, fast_health: bool = True) -> None:
        """``fast_health``: a lost node is noticed in ~1.5 s and no metrics are
        collected, for tests; a benchmark runs with Ray's defaults."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's socket paths must stay under 107 bytes: a short directory of its own.
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.env = {
            **os.environ,
            **(FAST_HEALTH if fast_health else {}),
            "RAY_USAGE_STATS_ENABLED": "0",
            # The nodes' workers import Corral (the actor) and the tests' fake engine.
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }

    def start(self) -> LocalRay:
        """The head: no CPUs, so no worker lands there (a gateway-only head)."""
        self._ray(
            "start",
            "--head",
            *("--node-ip-address", "127.0.0.1", "--port", str(self.port)),
            *("--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "false"),
            *self._own_ports(),
            "--dashboard-port",
            str(free_port()),
            *("--temp-dir", str(self.temp), "--disable-usage-stats"),
        )
        return self

    def add_node(
        self,
        label: str,
        cpus: int = 2,
        memory: int | None = None,
        resources: dict[str, float] | None = None,
        gpus: int = 0,
    ) -> None:
        """A node with ``cpus`` CPUs, ``gpus`` GPUs (Ray's count: none need exist),
        the custom resource ``label`` (1 of it), and ``resources``."""
        self._ray(*self._node_args(label, cpus, memory, resources, gpus))

    def add_nodes(self, *labels: str, memory: int | None = None) -> None:
        """Several 2-CPU nodes, one after another: nodes on one machine started at
        once race for their socket names under the session directory."""
        for label in labels:
            self.add_node(label, memory=memory)

    def _node_args(
        self,
        label: str,
        cpus: int,
        memory: int | None,
        resources: dict[str, float] | None,
        gpus: int,
    ) -> list[str]:
        return [
            "start",
            *("--address", self.address, "--node-ip-address", "127.0.0.1"),
            *("--num-cpus", str(cpus), "--num-gpus", str(gpus)),
            *("--resources", json.dumps({label: 1, **(resources or {})})),
            *(("--memory", str(memory)) if memory is not None else ()),
            *self._own_ports(),
            "--disable-usage-stats",
        ]

    @staticmethod
    def _own_ports() -> list[str]:
        """Ports of a node's agents that default to fixed numbers: free ones, so that
        two nodes (or two clusters) on this machine never collide."""
        return ["--dashboard-agent-listen-port", str(free_port())]

    def _raylet(self, label: str) -> psutil.Process:
        for process in psutil.process_iter(["cmdline"]):
            for arg in process.info["cmdline"] or []:
                if arg.startswith("--static_resource_list="):
                    names = arg.split("=", 1)[1].split(",")[::2]  # name,amount,name,...
                    if label in names:
                        return process
        raise LookupError(f"no raylet has the resource {label}")

    def node_id(self, label: str) -> str:
        for arg in self._raylet(label).cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise LookupError(f"the raylet of {label} shows no node id")

    def lose(self, label: str) -> None:
        """The node is gone: its raylet and everything it started, SIGKILLed at once."""
        raylet = self._raylet(label)
        doomed = [raylet, *raylet.children(recursive=True)]
        for process in doomed:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(doomed, timeout=10)

    def stop(self) -> None:
        """This cluster's processes, and only them (another test's cluster may run):
        everything whose command line names its directory, and their children."""
        mine = [
            p
            for p in psutil.process_iter(["cmdline"])
            if any(str(self.temp) in arg for arg in p.info["cmdline"] or [])
        ]
        doomed = set(mine)
        for process in mine:
            with contextlib.suppress(psutil.Error):
                doomed.update(process.children(recursive=True))
        for process in doomed:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(list(doomed), timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalRay]:
        """Started, and stopped at the end; one cluster at a time on this machine
        (the test processes share its two cores: a lock file serialises them)."""
        with LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.start()
            finally:
                self.stop()

    def _ray(self, *args: str) -> None:
        done = subprocess.run(
            [str(RAY), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray {args[0]} failed:\n{done.stdout}\n{done.stderr}")
