"""Send one OpenAI-shaped request to a worker and read its answer as it comes.

This is the gateway's only hop to workers (aiohttp, not httpx: 0.35 ms per round trip
here against httpx's 1.27 ms, bench/RESULTS.md). It knows nothing of the HTTP API the
client used: the API layers relay a ``WorkerReply`` as raw bytes (OpenAI), parsed
events or JSON (Ollama), and the batch runner reads it whole.

Failures are named. A worker that was gone before it took the request (its process
had exited, the connection was refused, or it was reset with the request unread)
raises ``WorkerGone``: nothing ran, so the inference service may send the request
once more to a new worker. A worker that dies
after it took the request raises ``WorkerCrashed`` with its exit code and last output,
and is never retried (the request may have had effects, such as a batch spool entry).
"""

from __future__ import annotations

import errno
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.hdrs import CONNECTION

from corral.errors import (
    ContextLengthExceeded,
    CorralError,
    EngineError,
    InvalidRequest,
    QueueFull,
    UnsupportedCapability,
    WorkerCrashed,
    WorkerGone,
    WorkerUnavailable,
)
from corral.protocol.handoff import USAGE_COMMENT, USAGE_HEADER
from corral.protocol.upstream import (
    StreamTranslator,
    Translation,
    translate_body,
    translate_request,
)
from corral.scheduler.process import WorkerProcess

log = logging.getLogger("corral.worker_client")
_USAGE_LINE = re.compile(re.escape(USAGE_COMMENT) + rb"(\{[^\n]*\})\n\n")
_UNREAD = (errno.ECONNRESET, errno.EPIPE)
# Every stream ends with its token counts (handoff.USAGE_HEADER), asked for or not.
JSON = {"Content-Type": "application/json", USAGE_HEADER: "comment"}
CRASH_WAIT_SECONDS = 1.0


class WorkerClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(
        self,
        worker: WorkerProcess,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[WorkerReply], None] | None = None,
    ) -> WorkerReply:
        """Post ``body``; the reply once its status and headers are in.

        ``on_close`` runs exactly once, when the reply is closed or read to the end;
        not if this raises (the caller decides what a failed send means for its slot).
        """
        if worker.gone():
            raise WorkerGone(f"The worker for '{worker.spec.model}' had exited.")
        translation = None
        sent = {**JSON, **(headers or {})}
        if worker.spec.foreign is not None:  # someone else's server: see upstream.py
            body, translation = translate_request(worker.spec.foreign, body, worker.spec.model)
            # No kept-alive connections: a server that closes an idle one as a request
            # arrives on it (llama-server's 5 s keep-alive) would fail that request
            # with nothing to tell it from a crash. A loopback connect costs ~0.1 ms.
            sent[CONNECTION] = "close"
        try:
            response = await self._session.post(worker.base_url + path, data=body, headers=sent)
        except aiohttp.ClientConnectorError as exc:
            raise WorkerGone(
                f"The worker for '{worker.spec.model}' refused the connection: {exc}"
            ) from None
        except aiohttp.ClientOSError as exc:
            # A reset (or a broken pipe) before any answer means the worker's socket
            # was closed with our request unread in it: the kernel resets a connection
            # closed with unread data. A worker that had read the request and then
            # died closes cleanly instead (ServerDisconnectedError, below).
            if exc.errno in _UNREAD and await worker.wait_exited(CRASH_WAIT_SECONDS):
                raise WorkerGone(
                    f"The worker for '{worker.spec.model}' exited (code {worker.returncode}) "
                    "before it read the request"
                ) from None
            raise await failure(worker, exc, answering=False) from None
        except aiohttp.ClientError as exc:
            raise await failure(worker, exc, answering=False) from None
        return WorkerReply(worker, response, on_close, translation)


class WorkerReply:
    """One worker answer. Read it once (``read``, ``json``, ``chunks`` or ``events``),
    then it closes itself; ``close`` ends it early (safe twice, no event loop needed,
    so a response's ``on_close`` may call it). An answer cut short drops the
    connection instead of pooling it, so the worker sees the client go and frees the
    slot."""

    def __init__(
        self,
        worker: WorkerProcess,
        response: aiohttp.ClientResponse,
        on_close: Callable[[WorkerReply], None] | None,
        translation: Translation | None = None,
    ) -> None:
        self.worker = worker
        self._translation = translation  # a foreign server's answer, changed back
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")
        self._usage_text = b""  # the body, or the last event, that carries ``usage``
        self.complete = False  # read to its end, not cut short
        self._response = response
        self._on_close = on_close
        self._closed = False
        self.first_chunk_ns: int | None = None  # perf_counter_ns of a stream's first bytes

    async def read(self) -> bytes:
        """The whole body, whatever the status."""
        try:
            content = await self._response.read()
            if self._translation is not None:
                content = translate_body(content, self._translation)
            self.complete = True
            if self.status == 200:
                self._usage_text = content
            return content
        except aiohttp.ClientError as exc:
            raise await failure(self.worker, exc, answering=True) from None
        finally:
            self.close()

    async def json(self) -> dict[str, Any]:
        """The body as a JSON object; a worker's error status raises the error it names."""
        content = await self.read()
        if self.status != 200:
            raise worker_error(self.status, content)
        return json_object_of(content)

    async def raise_for_status(self) -> None:
        """Read and raise a refusal (a 400 for a prompt too long...) before streaming."""
        if self.status != 200:
            raise worker_error(self.status, await self.read())

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; a worker dying mid-answer raises."""
        try:
            source = (
                self._response.content.iter_any()
                if self._translation is None
                else self._translated()
            )
            async for chunk in source:
                if self.first_chunk_ns is None:
                    self.first_chunk_ns = time.perf_counter_ns()
                if USAGE_COMMENT in chunk:  # ours, not the client's: read and removed
                    comment = _USAGE_LINE.search(chunk)
                    if comment is not None:
                        self._usage_text = comment.group(1)
                        chunk = chunk[: comment.start()] + chunk[comment.end() :]
                elif b'"usage"' in chunk:
                    self._usage_text = chunk
                if chunk:
                    yield chunk
            self.complete = True
        except aiohttp.ClientError as exc:
            raise await failure(self.worker, exc, answering=True) from None
        finally:
            self.close()

    async def _translated(self) -> AsyncIterator[bytes]:
        """A foreign server's body as a Corral worker would have sent it."""
        assert self._translation is not None
        translator = StreamTranslator(self._translation)
        async for chunk in self._response.content.iter_any():
            if translated := translator.feed(chunk):
                yield translated
        if rest := translator.close():
            yield rest

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The JSON of each SSE event; an ``error`` event raises the CorralError it names."""
        buffer = b""
        async for chunk in self.chunks():
            *events, buffer = (buffer + chunk).split(b"\n\n")
            for raw in events:
                event = _sse_data(raw)
                if event is not None:
                    yield event

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.complete:
            self._response.release()
        else:
            self._response.close()
        if self._on_close is not None:
            self._on_close(self)

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def usage(self) -> TokenUsage | None:
        """Token counts, when the answer gave them (streams: with include_usage).
        Parsed only when asked: most replies are relayed without anyone counting."""
        return usage_in(self._usage_text)


_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')
_JSON = json.JSONDecoder()


def usage_in(text: bytes) -> TokenUsage | None:
    """The last ``"usage": {...}`` object in a body or events, decoded alone: an
    embeddings body is mostly floats that a whole-body parse would decode for nothing.
    The key's quotes cannot come from inside a JSON string, where quotes are escaped."""
    for key in reversed(list(_USAGE_KEY.finditer(text))):
        try:
            usage, _ = _JSON.raw_decode(text[key.end() :].decode("utf-8", "replace"))
        except ValueError:
            continue  # cut short (an event split across chunks)
        if isinstance(usage, dict):
            try:
                return TokenUsage(
                    int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                )
            except (TypeError, ValueError):
                continue
    return None


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


async def failure(worker: WorkerProcess, exc: Exception, answering: bool) -> CorralError:
    """Name what happened: the worker died (with its last words) or is unreachable.

    ``answering``: the worker had begun its answer, so it crashed while serving this
    request. Before that, all that is known is that it died before answering: a worker
    killed while idle (an operator, the OOM killer) is found dead the same way.
    """
    if await worker.wait_exited(CRASH_WAIT_SECONDS):
        log.error("worker for %s died: %s", worker.spec.model, worker.exit_summary())
        when = "while answering" if answering else "before it answered"
        return WorkerCrashed(
            f"The worker for '{worker.spec.model}' crashed ({worker.exit_summary()}) "
            f"{when} this request; the next request restarts it. "
            f"Its last output:\n{worker.tail()}"
        )
    return WorkerUnavailable(f"The worker for '{worker.spec.model}' is unreachable: {exc!r}")


def _sse_data(raw: bytes) -> dict[str, Any] | None:
    """The JSON of one SSE event; None for ``[DONE]`` and comments. An error event
    raises it."""
    data = b"\n".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None
    event = json_object_of(data)
    if "error" in event:
        raise worker_error(None, data)
    return event


def json_object_of(content: bytes) -> dict[str, Any]:
    """A worker's answer as a JSON object, or an EngineError saying what came instead."""
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise EngineError(f"The worker sent an answer that is not a JSON object: {content[:200]!r}")
    return value


_BY_CODE: dict[str, type[CorralError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "unsupported_capability": UnsupportedCapability,
}
_BY_STATUS: dict[int, type[CorralError]] = {
    400: InvalidRequest,
    429: QueueFull,
    502: WorkerCrashed,
    503: WorkerUnavailable,
}


def worker_error(status: int | None, content: bytes) -> CorralError:
    """The CorralError a worker's OpenAI-shaped error body (and status) names."""
    try:
        body = json.loads(content)
        # OpenAI's shape, or vLLM's older flat one ({"object": "error", "message": ...}).
        error = body.get("error", body) if isinstance(body, dict) else {}
    except (ValueError, KeyError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message") or content[:500].decode(errors="replace"))
    kind = _BY_CODE.get(str(error.get("code"))) or _BY_STATUS.get(status or 500, EngineError)
    return kind(message, param=error.get("param"))
