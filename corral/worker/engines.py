"""Pick and start the worker's engine by name, from the gateway's own catalog.

The descriptor names the engine's implementation (``worker_engine``, a
``module:callable`` string), so the gateway never imports it; only this process does.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from corral.engines.base import Engine
from corral.engines.catalog import load_catalog, load_object
from corral.settings import Settings, env_name


class EngineStartError(Exception):
    """The engine named, or its parameters, cannot be used (a gateway bug or a
    hand-typed command line): the worker exits with the reason."""


def start_engine(name: str, model_path: Path, params_json: str) -> Engine:
    # The gateway's extra engines, read by the same setting (its other settings, which
    # its flags may override, are not the worker's to read); parameters: --params.
    engines = Settings.model_validate({"engines": os.environ.get(env_name("engines"), "")})
    catalog = load_catalog(engines.engines, environ={})
    descriptor = catalog.get(name)
    if descriptor.worker_engine is None:
        raise EngineStartError(f"the {name} engine does not run in Corral's worker")
    try:
        params = descriptor.params_model.model_validate_json(params_json)
    except ValidationError as exc:
        raise EngineStartError(f"invalid --params for {name}: {exc}") from None
    engine: Engine = load_object(descriptor.worker_engine)(model_path, params)
    return engine
