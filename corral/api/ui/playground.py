"""The playground: chat with a chat model (streamed, with parameters, a system prompt
and a JSON schema), compare texts with an embedding model, and call a tensor model
through a V2 form made from its schema. The page calls the public APIs themselves
(``/v1/chat/completions``, ``/v1/embeddings``, ``/v2/models/.../infer``), so what
it shows is what a client gets."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from corral.api.services import Services, services_of
from corral.registry.records import Capability


def models_by_capability(services: Services) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {c.value: [] for c in Capability}
    for record in services.registry.list():
        for capability in services.catalog.capabilities(record):
            out[capability.value].append(record.name)
    return out


async def playground_context(request: Request) -> dict[str, Any]:
    models = await asyncio.to_thread(models_by_capability, services_of(request))
    return {"models": models, "chosen": request.query_params.get("model", "")}
