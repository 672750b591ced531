"""How a model becomes a worker process: its engine's command on a free loopback port.

The pool never knows which engine runs a model: the engine catalog says what to run.
"""

from __future__ import annotations

import socket

from corral.engines.catalog import Catalog
from corral.engines.descriptor import EngineParams, LaunchContext
from corral.registry.records import ModelRecord
from corral.scheduler.process import WorkerSpec
from corral.settings import Settings

WORKER_HOST = "127.0.0.1"


def free_port(host: str = WORKER_HOST) -> int:
    """A port that was free a moment ago (the worker retries on the rare collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def worker_spec(
    catalog: Catalog,
    settings: Settings,
    record: ModelRecord,
    params: EngineParams,
    port: int,
    gpus: tuple[int, ...] = (),
    host: str = WORKER_HOST,
) -> WorkerSpec:
    """The worker for ``record``, answering on ``host``:``port`` (loopback unless
    Ray placed it on another node); placed on ``gpus``, it sees only those
    (``CUDA_VISIBLE_DEVICES``), numbered from 0 as every CUDA program expects."""
    ctx = LaunchContext(
        host=host,
        port=port,
        log_level=settings.log_level,
        spool_dir=settings.home / "batches",
    )
    command = catalog.command(record, params, ctx)
    return WorkerSpec(
        model=record.name,
        argv=command.argv,
        host=host,
        port=port,
        env={**command.env, **gpu_env(gpus)},
        health_path=command.health_path,
        start_timeout=command.start_timeout,
        foreign=command.foreign,
        sleep_path=command.sleep_path,
        wake_path=command.wake_path,
    )


def gpu_env(gpus: tuple[int, ...]) -> dict[str, str]:
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
