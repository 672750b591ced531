"""Pick and start the worker's engine by name, from the gateway's own catalog.

The descriptor names the engine's implementation (``worker_engine``, a
``module:callable`` string), so the gateway never imports it; only this process does.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from pydantic import ValidationError

from corral.engines.base import Engine
from corral.engines.catalog import load_catalog
from corral.settings import ENV_PREFIX


class EngineStartError(Exception):
    """The engine named, or its parameters, cannot be used (a gateway bug or a
    hand-typed command line): the worker exits with the reason."""


def start_engine(name: str, model_path: Path, params_json: str) -> Engine:
    extra = [p for p in os.environ.get(ENV_PREFIX + "ENGINES", "").split(",") if p.strip()]
    catalog = load_catalog(extra, environ={})  # parameters come from --params, not the env
    descriptor = next((d for d in catalog.descriptors if d.name == name), None)
    if descriptor is None or descriptor.worker_engine is None:
        raise EngineStartError(f"no engine called {name!r} runs in Corral's worker")
    try:
        params = descriptor.params_model.model_validate_json(params_json)
    except ValidationError as exc:
        raise EngineStartError(f"invalid --params for {name}: {exc}") from None
    module, _, attribute = descriptor.worker_engine.partition(":")
    factory = getattr(importlib.import_module(module), attribute)
    engine: Engine = factory(model_path, params)
    return engine
