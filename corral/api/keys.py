"""``/admin/keys``: API keys created, listed and revoked over HTTP (admin keys only).

``corral keys`` does the same on the registry database directly, which is how the
first key is made. A new key's secret is in the answer to its creation, and nowhere
else, ever.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from corral.api.auth import principal_of
from corral.api.services import services_of
from corral.api.spec import ADMIN, route
from corral.errors import InvalidRequest
from corral.httputil import json_response
from corral.keys.store import KeyInfo
from corral.protocol.parse import parse_body
from corral.units import parse_keep_alive

log = logging.getLogger("corral.keys")


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128)
    scope: Literal["inference", "admin"] = "inference"
    models: list[str] = Field(default_factory=list, description="[] = every model")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute")
    daily_tokens: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    expires: str | None = Field(None, description="how long the key is valid: 30d, 12h")


def key_object(info: KeyInfo) -> dict[str, object]:
    return {"object": "api_key", **asdict(info), "state": info.state}


async def list_keys(request: Request) -> Response:
    keys = await asyncio.to_thread(services_of(request).keys.list, True)
    return json_response({"object": "list", "data": [key_object(k) for k in keys]})


async def create_key(request: Request) -> Response:
    req = parse_body(await request.body(), CreateKeyRequest)
    expires_in = None
    if req.expires is not None:
        try:
            expires_in = parse_keep_alive(req.expires)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="expires") from None
    keys = services_of(request).keys
    created = await asyncio.to_thread(
        keys.create,
        req.name,
        req.scope,
        req.models,
        req.rpm,
        req.tpm,
        req.daily_tokens,
        req.max_concurrent,
        expires_in,
    )
    _audit(request, f"created key {created.key.id} ({created.key.name}, {created.key.scope})")
    return json_response({**key_object(created.key), "key": created.secret}, status=201)


async def revoke_key(request: Request) -> Response:
    keys = services_of(request).keys
    info = await asyncio.to_thread(keys.revoke, request.path_params["id"])
    _audit(request, f"revoked key {info.id} ({info.name})")
    return json_response(key_object(info))


def _audit(request: Request, what: str) -> None:
    actor = principal_of(request.state)
    log.info("%s, by %s", what, f"key {actor.key_id}" if actor else "a caller with no key")


routes = [
    route("GET", "/admin/keys", list_keys, "List API keys (never their secrets)", tag=ADMIN),
    route(
        "POST",
        "/admin/keys",
        create_key,
        "Create an API key (its secret is in this answer only)",
        tag=ADMIN,
        body=CreateKeyRequest,
    ),
    route("DELETE", "/admin/keys/{id}", revoke_key, "Revoke an API key", tag=ADMIN),
]
