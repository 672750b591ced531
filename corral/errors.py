"""Corral's errors: one base class, named subclasses, one mapping to each API's body.

Code raises the named error that says what went wrong; the HTTP layers turn it into
the status code and error body of the API the client speaks (OpenAI's
``{"error": {...}}``, Ollama's ``{"error": "..."}``). Nothing else decides status
codes, so the same failure looks the same on every route.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CorralError(Exception):
    """Base of every error Corral reports to a client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI's API returns for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_ollama(self) -> dict[str, Any]:
        """The body Ollama's API returns for this error (a plain message)."""
        return {"error": self.message}


class InvalidRequest(CorralError):
    """The request is malformed or has an invalid parameter."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """The prompt (plus the requested completion) does not fit the model's context."""

    code = "context_length_exceeded"


class UnsupportedCapability(InvalidRequest):
    """The model cannot do what was asked (e.g. chat with an embedding model)."""

    code = "unsupported_capability"


class ModelNotFound(CorralError):
    """No model with that name is installed."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The model '{name}' does not exist. Run `corral list` to see installed models.",
            param="model",
        )
        self.name = name

    def to_ollama(self) -> dict[str, Any]:
        # Ollama's own words: clients and scripts match on them.
        return {"error": f'model "{self.name}" not found, try pulling it first'}


class RouteNotFound(CorralError):
    """The URL path is not part of any API Corral serves."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(CorralError):
    """The path exists but not with this HTTP method."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class EngineLoadError(CorralError):
    """A worker failed to load its model; the message carries the worker's last words."""

    status = 500
    code = "model_load_failed"


class WorkerCrashed(CorralError):
    """A worker died while serving the request."""

    status = 502
    code = "worker_crashed"


class WorkerUnavailable(CorralError):
    """The worker could not be reached or did not answer in time."""

    status = 503
    code = "worker_unavailable"


class WorkerGone(WorkerUnavailable):
    """The worker was gone before it took the request (nothing ran: safe to resend)."""


class QueueFull(CorralError):
    """Too many requests are already waiting for this model; retry later."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class QueueTimeout(CorralError):
    """The request waited longer than the queue timeout for a free slot."""

    status = 503
    code = "queue_timeout"


class InsufficientMemory(CorralError):
    """The model cannot fit in the memory budget even with every evictable model gone."""

    status = 507
    code = "insufficient_memory"


class ShuttingDown(CorralError):
    """The server is shutting down and takes no new requests."""

    status = 503
    code = "shutting_down"


class EngineError(CorralError):
    """The engine failed while processing an admitted request."""

    status = 500
    code = "engine_error"
