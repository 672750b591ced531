"""How a model becomes a worker command line.

Kept apart from the pool so the pool never knows which engine runs a model: it is
handed a ``Launcher`` (tests hand it one that runs a fake worker).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

from corral.registry.store import ModelRecord
from corral.scheduler.memory import WorkerParams
from corral.scheduler.process import WorkerSpec
from corral.settings import Settings

Launcher = Callable[[ModelRecord, int, WorkerParams], WorkerSpec]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the worker retries on the rare collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def llamacpp_launcher(settings: Settings) -> Launcher:
    def launch(model: ModelRecord, port: int, params: WorkerParams) -> WorkerSpec:
        argv = [
            sys.executable,
            "-m",
            "corral.worker",
            "--model-path",
            str(model.path),
            "--model-name",
            model.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(params.threads),
            "--slots",
            str(params.slots),
            "--context-length",
            str(params.context_length),
            "--batch-size",
            str(params.batch_size),
            "--flash-attention",
            settings.flash_attention,
            "--log-level",
            settings.log_level,
            "--spool-dir",
            str(settings.home / "batches"),
            "--exit-on-stdin-eof",
        ]
        return WorkerSpec(model=model.name, argv=tuple(argv), host="127.0.0.1", port=port)

    return launch
