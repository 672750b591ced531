"""``corral create``: a new model name over an existing model's files, with its own
engine and parameters (Ollama's ``create``, without a Modelfile).

The everyday use is the ``command`` engine: the same GGUF served by llama.cpp's
``llama-server`` beside Corral's own llama.cpp worker, or a model directory served by
a vLLM command, each under a name of its own. Parameters are checked by the engine's
own parameter model before anything is kept: a new name that could not load is not
created.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from corral.cli.registry import RegistryClient, RegistryError


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as parameters. A value is JSON when it parses as JSON (a
    number, true, a list), else the text as given: ``slots=8``, ``command=llama-server
    -m ${MODEL_PATH}``, ``capabilities=["embeddings"]``."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RegistryError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def create(
    client: RegistryClient,
    name: str,
    source: str,
    engine: str | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Copy ``source`` to ``name`` and give it ``engine`` and ``params`` (on top of the
    source's own); the copy is removed again if the engine refuses them."""
    base = client.show(source)
    declared = {**base.get("params", {}), **params}
    if engine or base.get("engine"):
        declared["engine"] = engine or base["engine"]
    created = client.copy(source, name)
    try:
        return client.configure(created["name"], declared, [])
    except RegistryError:
        client.remove(created["name"])
        raise
