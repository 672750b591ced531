"""What the scheduler needs to know about a request, read from its headers and body.

- priority: ``X-Corral-Priority: interactive`` (default) or ``batch``; requests made
  with one of ``CORRAL_BATCH_KEYS`` are batch whatever the header says;
- client key: the bearer token of ``Authorization`` (keys take turns in a queue);
- keep-alive: the body's ``keep_alive`` (Ollama semantics), if any.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request

from corral.api.auth import api_key_of, principal_of
from corral.errors import InvalidRequest
from corral.scheduler.queue import Priority
from corral.service.inference import Caller, Trace
from corral.units import parse_keep_alive

PRIORITY_HEADER = "x-corral-priority"


def request_priority(request: Request, batch_keys: Collection[str] = ()) -> Priority:
    value = request.headers.get(PRIORITY_HEADER, "interactive").strip().lower()
    try:
        asked = Priority[value.upper()]
    except KeyError:
        raise InvalidRequest(
            f"{PRIORITY_HEADER} must be 'interactive' or 'batch', not {value!r}."
        ) from None
    return Priority.BATCH if bearer_token(request) in batch_keys else asked


def caller_of(request: Request, batch_keys: Collection[str] = ()) -> Caller:
    """Who is asking: priority, the key's turn in line, and the API key itself."""
    principal = principal_of(request.state)
    key = principal.key_id if principal is not None else client_key(request)
    trace = getattr(request.state, "trace", None)
    return Caller(
        priority=request_priority(request, batch_keys),
        key=key,
        principal=principal,
        trace=trace if isinstance(trace, Trace) else None,
    )


def note_client_fields(caller: Caller, fields: Mapping[str, Any]) -> None:
    """The client's own labels for a request (OpenAI's ``user`` and ``metadata``), for
    the request log."""
    if caller.trace is None:
        return
    user = fields.get("user")
    metadata = fields.get("metadata")
    caller.trace.user = user[:256] if isinstance(user, str) else None
    caller.trace.metadata = metadata if isinstance(metadata, dict) else None


def bearer_token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def client_key(request: Request) -> str:
    """A stable, non-secret name for the caller's API key (a hash, never the key)."""
    token = api_key_of(request.scope)
    if not token:
        return "anonymous"
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def keep_alive_of(req: BaseModel) -> float | None:
    """Seconds to keep the model loaded after this request; inf = forever; None = unset."""
    return keep_alive_seconds((req.model_extra or {}).get("keep_alive"))


def keep_alive_seconds(raw: str | float | None) -> float | None:
    """A ``keep_alive`` value (Ollama's: seconds or "5m"; negative = forever) as seconds;
    inf = forever; None = unset. A bad value is a 400 naming the parameter."""
    if raw is None:
        return None
    try:
        seconds = parse_keep_alive(raw)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="keep_alive") from None
    return math.inf if seconds is None else seconds


def page_limit(request: Request, default: int, most: int) -> int:
    """A list route's ``limit`` query parameter, 1 to ``most``; anything else is a 400."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer, not {raw!r}.", param="limit") from None
    if not 1 <= limit <= most:
        raise InvalidRequest(f"limit must be between 1 and {most}.", param="limit")
    return limit
