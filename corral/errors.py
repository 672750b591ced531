"""Every error Corral reports to a client: one base class, named subclasses, one mapping.

Every error a client can see is a ``CorralError`` subclass defined in this module,
grouped below by where it arises (requests, models and the registry, pulls, workers
and scheduling, batches and files). Code anywhere raises the named error that says
what went wrong; the classes here are plain data (a status code, an OpenAI error
``type`` and ``code``, a message) and import nothing else from Corral, so any
module can raise them.

One mapping turns an error into a response, and the HTTP layers only apply it:
``status`` is the status code, and the body is in the shape of the API the client
speaks, OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``
(``to_openai``) or Ollama's ``{"error": "..."}`` (``to_ollama``). Nothing else
decides status codes, so the same failure looks the same on every route.

An exception that is not a ``CorralError`` is a bug, and its text may hold paths,
prompts or secrets, so it never reaches a client: ``httputil.internal_error`` (used
by both APIs' handlers) gives the failure a request id (the client's ``X-Request-Id``
if it is printable ASCII and at most 128 characters, else a fresh ``req_`` + 24 hex
digits), logs the exception with its traceback and that id, and returns
``InternalError``: a 500 whose message names only the id, which also comes back in
the ``X-Request-Id`` response header. A batch that fails that way records the same
message, under a fresh id.

Exceptions a client never sees (control flow inside one module, CLI-only errors,
configuration errors) live next to the code that raises them.
"""

from __future__ import annotations

import secrets
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

    def to_anthropic(self) -> dict[str, Any]:
        """The body Anthropic's API returns for this error: a type chosen by status."""
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else None)
        return {
            "type": "error",
            "error": {"type": kind or "invalid_request_error", "message": self.message},
        }


# Anthropic's error types by status code (its API reference, "Errors").
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


# --- requests -------------------------------------------------------------------------


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


class ChatTemplateError(InvalidRequest):
    """The chat template rejected the messages (e.g. roles in an order it forbids)."""


class UnsupportedSchema(InvalidRequest):
    """The JSON Schema is valid, but output cannot be constrained to it exactly."""


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


class HostNotAllowed(CorralError):
    """The Host header names a host the server is not known by (DNS rebinding)."""

    status = 403
    type = "invalid_request_error"
    code = "host_not_allowed"


class OriginNotAllowed(CorralError):
    """A web page of an origin not allowed made a state-changing or CORS request."""

    status = 403
    type = "invalid_request_error"
    code = "origin_not_allowed"


class UnsupportedMediaType(CorralError):
    """A body type a browser sends cross-site without asking (text/plain, multipart)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


def new_request_id() -> str:
    """A fresh request id: ``req_`` and 24 hex digits."""
    return "req_" + secrets.token_hex(12)


class InternalError(CorralError):
    """An unexpected failure; the client gets its request id, the server log the details."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"Internal error (request id {request_id}); the server log has the details.",
            # uvicorn closes the connection after an unhandled exception; saying so
            # keeps a client from sending its next request on a dead connection.
            headers={"X-Request-Id": request_id, "Connection": "close"},
        )
        self.request_id = request_id


# --- models and registry --------------------------------------------------------------


class ModelNotFound(CorralError):
    """No model with that name is installed."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str, similar: tuple[str, ...] = ()) -> None:
        hint = f" Did you mean '{similar[0]}'?" if similar else ""
        super().__init__(
            f"The model '{name}' does not exist.{hint} Run `corral list` to see installed models.",
            param="model",
        )
        self.name = name

    def to_ollama(self) -> dict[str, Any]:
        # Ollama's own words: clients and scripts match on them.
        return {"error": f'model "{self.name}" not found, try pulling it first'}


class InvalidModelName(InvalidRequest):
    """A model name that is not ``name[:tag]`` with safe characters."""


class InvalidReference(InvalidRequest):
    """A pull reference that is not a Hub repo, a URL to a file, or a local path."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model")


class ModelExists(CorralError):
    """A model (or alias) already has the name a new model was to get."""

    status = 409
    type = "invalid_request_error"
    code = "model_exists"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"A model named {name!r} already exists; remove it first or pick another name."
        )


# --- pulls ----------------------------------------------------------------------------


class ResolveError(CorralError):
    """The reference names nothing that can be pulled."""

    status = 404
    type = "invalid_request_error"
    code = "pull_failed"


class BadSource(ResolveError):
    """The source exists but holds nothing Corral can pull (e.g. no weights)."""

    status = 400


class AccessDenied(ResolveError):
    """The source refused access (a gated or private repo, a missing token)."""

    status = 403


class SourceUnreachable(ResolveError):
    """The source (the Hub or a web server) could not be reached."""

    status = 502
    type = "server_error"


class DownloadError(CorralError):
    """A file of the pull could not be downloaded."""

    status = 502
    code = "pull_failed"


class SourceFileMissing(DownloadError):
    """The server says a file of the pull does not exist (404)."""

    status = 404


class DiskFull(DownloadError):
    """The disk filled up while a file was being downloaded."""

    status = 507
    code = "insufficient_storage"


class ChecksumMismatch(DownloadError):
    """A downloaded file's hash is not the one expected; nothing was registered."""

    status = 422

    def __init__(self, path: str, expected: str, actual: str, kind: str = "sha256") -> None:
        super().__init__(
            f"{path}: {kind} mismatch: expected {expected}, got {actual}. The download was "
            "discarded and nothing was registered."
        )


class PullNotFound(CorralError):
    """No pull job with that id."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No pull job {job_id!r}.")


class InsufficientStorage(CorralError):
    """The disk has too little free space for the pull."""

    status = 507
    code = "insufficient_storage"


class LockDrift(CorralError):
    """The source's files no longer match the lock file's pinned hashes."""

    status = 409
    type = "invalid_request_error"
    code = "lock_drift"


# --- workers and scheduling -----------------------------------------------------------


class EngineLoadError(CorralError):
    """A worker failed to load its model; the message carries the worker's last words."""

    status = 500
    code = "model_load_failed"


class PortTaken(EngineLoadError):
    """Another process answers on the port chosen for a worker: start it elsewhere."""


class WorkerCrashed(CorralError):
    """A worker died while serving the request."""

    status = 502
    code = "worker_crashed"


class ModelBackingOff(CorralError):
    """The model crashed repeatedly and waits before its next start (crash-loop backoff)."""

    status = 503
    code = "model_backing_off"


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


# --- batches and files ----------------------------------------------------------------


class BadLine(InvalidRequest):
    """A line that is not a valid batch request; carries its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"Line {line}: {message}", param="file")
        self.line = line
        self.reason = message


class UploadTooLarge(CorralError):
    """An upload went over the size limit; it stopped at the first byte over."""

    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


class RequestTooLarge(CorralError):
    """A request body over ``max_body``; refused before it is parsed."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, message: str) -> None:
        # The rest of the body is not read: the connection cannot carry another request.
        super().__init__(message, headers={"Connection": "close"})


class RequestTimeout(CorralError):
    """A request body stopped arriving (a slow or stalled client)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class FileNotFound(CorralError):
    """No stored file with that id."""

    status = 404
    type = "invalid_request_error"
    code = "file_not_found"

    def __init__(self, file_id: str) -> None:
        super().__init__(f"No such File object: {file_id}", param="file_id")


class BatchNotFound(CorralError):
    """No batch with that id."""

    status = 404
    type = "invalid_request_error"
    code = "batch_not_found"

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"No such batch: {batch_id}", param="batch_id")


# --- disk and network guards ----------------------------------------------------------


class LocalPathRefused(CorralError):
    """The API was asked to read a path on the server's disk outside the import
    directories (``CORRAL_IMPORT_DIRS``)."""

    status = 403
    type = "invalid_request_error"
    code = "local_path_refused"


class PrivateAddressRefused(CorralError):
    """A pull would connect to a loopback, private or otherwise non-public address
    (``CORRAL_ALLOW_PRIVATE_PULLS`` allows it)."""

    status = 403
    type = "invalid_request_error"
    code = "private_address_refused"


# --- keys and limits --------------------------------------------------------------------


class AuthenticationRequired(CorralError):
    """No API key, or one that is unknown, revoked or expired, once keys exist."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(CorralError):
    """A key whose scope does not cover the route (an inference key on an admin route)."""

    status = 403
    type = "invalid_request_error"
    code = "insufficient_scope"


class KeyNotFound(CorralError):
    """No API key with that id or name."""

    status = 404
    type = "invalid_request_error"
    code = "key_not_found"


class RateLimited(CorralError):
    """A key went over one of its limits; ``Retry-After`` says when to try again."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
