"""A test-only engine: the fake worker (``tests.support.fake_worker``) behind a descriptor.

The gateway reaches it exactly as it reaches llama.cpp: ``CORRAL_ENGINES`` names this
module's ``descriptor``, a model declares ``engine: fake`` (its parameters, the fake's
script), and the catalog routes, sizes and starts it. No gateway code knows it exists,
which is the point: scheduling, queueing, crash, retry and batch tests run on it in
milliseconds per request instead of on a real model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.engines.descriptor import (
    EngineDescriptor,
    EngineParams,
    LaunchContext,
    MemoryEstimate,
    WorkerCommand,
)
from corral.registry.records import Capability, ModelRecord
from corral.registry.store import Registry
from tests.support.fake_params import FakeParams
from tests.support.models import CHAT, model_file

ENGINES_ENV = "tests.support.fake_engine:descriptor"
TEXT = frozenset({Capability.CHAT, Capability.COMPLETION})
EMBEDDINGS = frozenset({Capability.EMBEDDINGS})


class FakeDescriptor(EngineDescriptor):
    name = "fake"
    formats = frozenset({"gguf"})  # any file will do: the fake never opens it
    params_model = FakeParams

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        return EMBEDDINGS if record.params.get("embedding") else TEXT

    def command(
        self, record: ModelRecord, params: EngineParams, ctx: LaunchContext
    ) -> WorkerCommand:
        argv = (
            *(ctx.python, "-m", "tests.support.fake_worker"),
            *("--host", ctx.host, "--port", str(ctx.port), "--model-name", record.name),
            *("--params", params.model_dump_json(), "--spool-dir", str(ctx.spool_dir)),
            *("--log-level", ctx.log_level, "--exit-on-stdin-eof"),
        )
        assert isinstance(params, FakeParams)
        if params.sleep:
            return WorkerCommand(argv, sleep_path="/sleep?level=1", wake_path="/wake_up")
        return WorkerCommand(argv)

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        assert isinstance(params, FakeParams)
        return MemoryEstimate(
            weights=params.memory, kv_cache=0, buffers=0, process=0, vram=params.vram
        )

    def sleeps(self, params: EngineParams) -> bool:
        return isinstance(params, FakeParams) and params.sleep


descriptor = FakeDescriptor()


def install_fake_models(
    home: Path, models: Mapping[str, Mapping[str, Any]], database_url: str | None = None
) -> Registry:
    """Install fake-engine models: each name with its ``FakeParams`` (the fake's script).
    The file is any small GGUF (the fake never opens it; the registry wants a model)."""
    store = Registry(home, database_url)
    path = model_file(CHAT)
    for name, params in models.items():
        store.import_path(path, name, params={"engine": "fake", **params})
    return store
