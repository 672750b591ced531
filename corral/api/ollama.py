"""Ollama-compatible routes. So far: ``GET /api/ps`` (the rest of the API comes next)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.api.gateway import gateway_of
from corral.httputil import json_response

FOREVER = datetime(2318, 1, 1, tzinfo=UTC)  # Ollama's "never expires" is a far-future time


async def ps(request: Request) -> Response:
    gateway = gateway_of(request)
    models = []
    for entry in gateway.scheduler.snapshot():
        if entry["state"] not in ("ready", "draining"):
            continue
        record = gateway.registry.get(entry["model"])
        info = record.info
        memory = entry["memory"]
        expires = entry["expires_at"]
        models.append(
            {
                "name": record.name,
                "model": record.name,
                "size": memory["actual"] or memory["estimated"],
                "digest": record.sha256,
                "details": {
                    "parent_model": "",
                    "format": info.format,
                    "family": info.architecture,
                    "families": [info.architecture],
                    "parameter_size": parameter_size(info.parameters),
                    "quantization_level": info.quantization,
                },
                "expires_at": (
                    datetime.fromtimestamp(expires, UTC) if expires is not None else FOREVER
                ).isoformat(),
                "size_vram": 0,
                "context_length": entry["params"]["context_length"] or info.context_length,
            }
        )
    return json_response({"models": models})


def parameter_size(n: int) -> str:
    """Ollama's style: 7.2B, 135M."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}" if n < 100 * scale else f"{n / scale:.0f}{unit}"
    return str(n)


routes = [Route("/api/ps", ps, methods=["GET"])]
