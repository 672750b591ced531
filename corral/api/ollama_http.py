"""What every Ollama route shares: Ollama's error shape and NDJSON streaming.

The app's exception handlers answer in OpenAI's shape, which Ollama clients cannot
read (``ollama.ResponseError`` takes the ``error`` string). So each Ollama route is
wrapped by ``ollama_errors``: the same named errors and status codes, in Ollama's
body ``{"error": "..."}``. Once a stream has begun the status is sent, so an error
then is one more line, ``{"error": "..."}``, which is what Ollama does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response

from corral.errors import CorralError
from corral.httputil import (
    SSE_HEADERS,
    DisconnectAwareStreamingResponse,
    errors_shaped,
    json_dumps,
    json_response,
)
from corral.protocol.ollama_openai import timestamp

log = logging.getLogger("corral.ollama")
NDJSON = "application/x-ndjson"

# Answer the route's failures in Ollama's error shape.
ollama_errors = errors_shaped(lambda error: error.to_ollama(), log)


def error_response(error: CorralError) -> Response:
    return json_response(error.to_ollama(), status=error.status, headers=error.headers)


def line(value: Any) -> bytes:
    """One NDJSON line."""
    return json_dumps(value).encode() + b"\n"


def ndjson_stream(
    body: AsyncIterator[bytes], on_close: Callable[[], None] | None = None
) -> Response:
    """A streamed NDJSON answer; stops as soon as the client leaves, then ``on_close``.
    Unbuffered by proxies, as the SSE streams are."""
    return DisconnectAwareStreamingResponse(
        body, media_type=NDJSON, headers=SSE_HEADERS, on_close=on_close
    )


def now() -> str:
    """``created_at`` for a line written now."""
    return timestamp(time.time_ns())
