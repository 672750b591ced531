"""Routes that describe themselves: the facts ``/openapi.json`` is made of.

Each API module declares its routes with :func:`route`, naming the pydantic models
the handler itself parses the body with and answers with. The OpenAPI document is
built from these routes (``corral.api.openapi``), so it cannot list a route the
gateway does not serve or a body schema other than the one that is enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from starlette.routing import Match, Route
from starlette.types import Scope

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# Who may call a route once API keys exist: anyone (liveness, the docs), any key
# (inference, and the files and batches the key owns), or an admin key. "metrics" is
# public or admin as CORRAL_METRICS_NEED_KEY says.
Access = Literal["public", "inference", "admin", "metrics"]

# Tags group the operations in /docs; each API answers errors in its own shape.
OPENAI, OLLAMA, ANTHROPIC, FILES, BATCH, ADMIN, HEALTH, V2 = (
    "OpenAI",
    "Ollama",
    "Anthropic",
    "Files",
    "Batch",
    "Admin",
    "Health",
    "Open Inference Protocol (V2)",
)


@dataclass(frozen=True)
class Operation:
    """What one method on one path takes and gives, for the OpenAPI document."""

    summary: str
    tag: str
    body: type[BaseModel] | None = None
    reply: type[BaseModel] | None = None
    # The media type of the streamed answer when the body asks to stream.
    stream: str | None = None
    # A body that is not JSON: its media type (the file upload is multipart).
    body_media: str | None = None
    reply_media: str = "application/json"
    query: Mapping[str, str] = field(default_factory=dict)  # name -> description
    description: str | None = None
    access: Access = "inference"


class DocumentedRoute(Route):
    """A Starlette route that carries its :class:`Operation`."""

    def __init__(
        self, path: str, endpoint: Callable[..., Any], method: Method, operation: Operation
    ) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method = method
        self.operation = operation


def route(
    method: Method,
    path: str,
    endpoint: Callable[..., Any],
    summary: str,
    *,
    tag: str,
    body: type[BaseModel] | None = None,
    reply: type[BaseModel] | None = None,
    stream: str | None = None,
    body_media: str | None = None,
    reply_media: str = "application/json",
    query: Mapping[str, str] | None = None,
    access: Access | None = None,
) -> DocumentedRoute:
    """One route with what it takes and gives; the endpoint's docstring, if any,
    becomes the operation's description. ``access`` defaults by tag: Health routes
    are public, Admin routes need an admin key, the rest any key."""
    if access is None:
        access = {HEALTH: "public", ADMIN: "admin"}.get(tag, "inference")  # type: ignore[assignment]
    operation = Operation(
        summary=summary,
        tag=tag,
        body=body,
        reply=reply,
        stream=stream,
        body_media=body_media,
        reply_media=reply_media,
        query=dict(query or {}),
        description=endpoint.__doc__,
        access=access or "inference",
    )
    return DocumentedRoute(path, endpoint, method, operation)


_ROUTE_CACHE_SIZE = 4096


def matched_route(scope: Scope) -> DocumentedRoute | None:
    """The documented route a request's method and path match, if any.

    Every request asks twice (its access, then its metrics and log line), and the
    routes never change: the answer is kept per (method, path), up to a few thousand
    paths (model names in paths make them many), so most requests match no regex.
    """
    app = scope["app"]
    cache: dict[tuple[str, str], DocumentedRoute | None] | None = getattr(
        app.state, "route_cache", None
    )
    if cache is None:
        cache = app.state.route_cache = {}
    key = (scope["method"], scope["path"])
    if key in cache:
        return cache[key]
    found = None
    for candidate in app.routes:
        if isinstance(candidate, DocumentedRoute):
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                found = candidate
                break
    if len(cache) >= _ROUTE_CACHE_SIZE:
        cache.clear()
    cache[key] = found
    return found
