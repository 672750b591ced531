"""A fake Corral worker: the real worker's HTTP surface over a scripted engine, for tests.

Gateway tests (scheduling, queueing, crashes, retries, batches) need a worker whose
behaviour they script: how many slots it has, how long a token takes, how slowly it loads,
which request makes it crash. This process answers the same routes as ``corral.worker``
(OpenAI's, plus ``/health``), starts in a fraction of a second without a model file, and
records finished requests through the same ``handoff`` module, so the batch spool and
``CORRAL_EXECUTION_LOG`` work as with the real worker. It is a test double, never a
feature: nothing under ``corral/`` may import it.

    python -m tests.support.fake_worker --host 127.0.0.1 --port P --model-name NAME \\
        --params '{"slots": 1, "token_delay": 0.05}' [--exit-on-stdin-eof] \\
        [--spool-dir DIR] [--log-level info]

``--params`` is a JSON object of ``FakeParams`` (``tests/support/fake_params.py``).
Replies are deterministic: token i is ``"t{i} "``, and a prompt counts one token per
whitespace-separated word, plus one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from corral.protocol.handoff import USAGE_COMMENT, USAGE_HEADER  # the wire, as the worker
from corral.worker import handoff  # the fake's only import of worker code
from tests.support.fake_params import FakeParams

EXIT_BAD_PARAMS = 2
EXIT_LOAD_FAILED = 3
EXIT_CRASHED = 70

T = TypeVar("T")


# --- errors and JSON -----------------------------------------------------------------


class ApiError(Exception):
    """A refused request, answered in OpenAI's error shape."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    def response(self) -> Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return json_response({"error": error}, self.status)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(dumps(value), status, media_type="application/json")


def missing(param: str) -> ApiError:
    return ApiError(f"Missing required parameter: '{param}'.", param=param)


def invalid(param: str, expected: str) -> ApiError:
    return ApiError(f"Invalid value for '{param}': expected {expected}.", param=param)


# --- requests --------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    return len(text.split()) + 1


@dataclass(frozen=True)
class Job:
    """One generation request, reduced to what the fake engine looks at."""

    chat: bool
    prompt: str  # all prompt text together: what is counted and matched against crash_on
    max_tokens: int | None
    stream: bool
    include_usage: bool


async def read_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        raise ApiError("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    if "model" not in body:
        raise missing("model")
    if not isinstance(body["model"], str) or not body["model"]:
        raise invalid("model", "a model name")
    return body


def message_text(content: Any, param: str) -> str:
    """A message's text: a string, null, or a list of content parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return " ".join(str(part["text"]) for part in content if "text" in part)
    raise invalid(param, "a string or an array of content parts")


def chat_job(body: dict[str, Any]) -> Job:
    messages = body.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "a non-empty array of messages")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", "an object")
        texts.append(message_text(message.get("content"), f"messages[{i}].content"))
    return Job(True, "\n".join(texts), *generation_options(body))


def completion_job(body: dict[str, Any]) -> Job:
    prompt = body.get("prompt")
    if prompt is None:
        raise missing("prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        prompt = "\n".join(prompt)
    if not isinstance(prompt, str):
        raise invalid("prompt", "a string or an array of strings")
    return Job(False, prompt, *generation_options(body))


def generation_options(body: dict[str, Any]) -> tuple[int | None, bool, bool]:
    param = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    limit = body.get(param)
    if limit is not None and (type(limit) is not int or limit < 0):
        raise invalid(param, "a non-negative integer")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid("stream", "a boolean")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return limit, stream, include_usage


def embedding_request(body: dict[str, Any], max_dims: int) -> tuple[list[str], str, int | None]:
    """The inputs, encoding format and dimensions of an embeddings request."""
    inputs = body.get("input")
    if inputs is None:
        raise missing("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not (isinstance(inputs, list) and inputs and all(isinstance(s, str) and s for s in inputs)):
        raise invalid("input", "a non-empty string or array of non-empty strings")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise invalid("encoding_format", "'float' or 'base64'")
    dims = body.get("dimensions")
    if dims is not None and (type(dims) is not int or not 1 <= dims <= max_dims):
        raise invalid("dimensions", f"an integer from 1 to {max_dims}")
    return inputs, fmt, dims


# --- embeddings ------------------------------------------------------------------------


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def embed(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``, from its SHAKE-256 (SHA-3) digest."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dims)
    return unit(
        [int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1 for i in range(0, 2 * dims, 2)]
    )


def encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


# --- streaming -------------------------------------------------------------------------


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T | None:
    """Await ``work``; cancel it and return None the moment the client disconnects."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        watch.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    return None if task.cancelled() else task.result()


class EventStream(StreamingResponse):
    """Server-sent events that stop the moment the client leaves, freeing the slot at once
    (Starlette alone notices a gone client only when a write fails)."""

    def __init__(self, body: AsyncGenerator[bytes, None]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self.events = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with contextlib.suppress(OSError):  # a write to a client that is gone
                await until_disconnect(receive, self.stream_response(send))
        finally:
            await self.events.aclose()


def sse(value: Any) -> bytes:
    return b"data: " + (value if isinstance(value, bytes) else dumps(value).encode()) + b"\n\n"


def envelope(job: Job, model: str, stream: bool) -> dict[str, Any]:
    """The fields every response (or chunk of one stream) starts with."""
    chat_object = "chat.completion.chunk" if stream else "chat.completion"
    return {
        "id": f"{'chatcmpl' if job.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": chat_object if job.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        # Which worker answered (a model with replicas has several): its pid.
        "system_fingerprint": f"fake-{os.getpid()}",
    }


class Chunks:
    """The chunks of one streamed reply, framed as OpenAI frames them."""

    def __init__(self, job: Job, model: str) -> None:
        self.job = job
        self.head = envelope(job, model, stream=True)

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {**self.head, "choices": choices}
        if self.job.include_usage:  # then every chunk carries "usage", null until the last
            body["usage"] = usage
        return sse(body)

    def start(self) -> bytes:
        return self.chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])

    def choice(self, text: str, reason: str | None) -> dict[str, Any]:
        if self.job.chat:
            delta = {"content": text} if text else {}
            return {"index": 0, "delta": delta, "finish_reason": reason}
        return {"index": 0, "text": text, "finish_reason": reason}

    def token(self, text: str) -> bytes:
        return self.chunk([self.choice(text, None)])

    def finish(self, reason: str, usage: dict[str, int]) -> bytes:
        out = self.chunk([self.choice("", reason)])
        return out + self.chunk([], usage) if self.job.include_usage else out


# --- the fake engine and its routes ------------------------------------------------------


def token(i: int) -> str:
    return f"t{i} "


class FakeWorker:
    """The fake engine (slots, steps, counters) and the routes that drive it."""

    def __init__(self, params: FakeParams, model: str) -> None:
        self.params = params
        self.model = model
        self.started = int(time.time())
        self.slots = asyncio.Semaphore(params.slots)
        self.busy = 0  # requests in flight: running or waiting for a slot
        self.running = 0
        self.served = 0
        self.asleep = False  # sleep mode: refuses inference until woken
        self.sleeps = 0
        self.wakes = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.busy += 1
        try:
            async with self.slots:
                self.running += 1
                try:
                    yield
                finally:
                    self.running -= 1
        finally:
            self.busy -= 1

    async def step(self) -> None:
        if self.params.token_delay:
            await asyncio.sleep(self.params.token_delay)

    def crash_if_asked(self, text: str) -> None:
        crash_on = self.params.crash_on
        if crash_on is not None and crash_on in text:
            print(f"fake worker: crashing (crash_on {crash_on!r})", file=sys.stderr, flush=True)
            os._exit(EXIT_CRASHED)

    def require(self, embedding: bool) -> None:
        if self.asleep:  # vLLM asleep has no weights on its GPU: nothing may run
            raise ApiError("The fake worker is asleep.", status=503)
        if self.params.embedding != embedding:
            what = "is an embedding model" if self.params.embedding else "does not embed"
            message = f"The model '{self.model}' {what}; it cannot serve this endpoint."
            raise ApiError(message, param="model", code="unsupported_capability")

    def check_context(self, tokens: int, param: str) -> None:
        limit = self.params.context_length
        if tokens > limit:
            message = (
                f"This model's maximum context length is {limit} tokens. However, your "
                f"{param} resulted in {tokens} tokens. Please reduce the length of the {param}."
            )
            raise ApiError(message, param=param, code="context_length_exceeded")

    def planned(self, job: Job) -> tuple[int, str]:
        """How many tokens the reply has, and why it ends there."""
        if job.max_tokens is not None and job.max_tokens < self.params.tokens:
            return job.max_tokens, "length"
        return self.params.tokens, "stop"

    def usage(self, job: Job, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = count_tokens(job.prompt)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def finished(self, request: Request, body: dict[str, Any]) -> Response:
        """A whole response the engine ran to the end: recorded (``handoff``), then sent."""
        payload = dumps(body)
        handoff.finished(request, payload)
        self.served += 1
        return Response(payload, media_type="application/json")

    # --- routes ---------------------------------------------------------------------------

    async def health(self, _: Request) -> Response:
        waiting = self.busy - self.running
        return json_response(
            {
                "status": "ok",
                "model": self.model,
                "busy": self.busy,
                "waiting": waiting,
                "served": self.served,
                **({"sleeps": self.sleeps, "wakes": self.wakes} if self.params.sleep else {}),
            }
        )

    async def sleep(self, _: Request) -> Response:
        self.asleep, self.sleeps = True, self.sleeps + 1
        return json_response({})

    async def wake_up(self, _: Request) -> Response:
        self.asleep, self.wakes = False, self.wakes + 1
        return json_response({})

    async def models(self, _: Request) -> Response:
        card = {"id": self.model, "object": "model", "created": self.started, "owned_by": "corral"}
        return json_response({"object": "list", "data": [card]})

    async def generate(self, request: Request) -> Response:
        body = await read_body(request)
        self.require(embedding=False)
        job = (
            chat_job(body)
            if request.url.path.endswith("/chat/completions")
            else completion_job(body)
        )
        self.check_context(count_tokens(job.prompt), "messages" if job.chat else "prompt")
        if job.stream:
            comment = request.headers.get(USAGE_HEADER) == "comment"
            return EventStream(self.stream(job, usage_comment=comment))
        n, reason = self.planned(job)
        if await until_disconnect(request.receive, self.work(n)) is None:
            return Response(status_code=499)  # never delivered: the client is gone
        self.crash_if_asked(job.prompt)
        text = "".join(map(token, range(n)))
        reply = {"message": {"role": "assistant", "content": text}} if job.chat else {"text": text}
        choice = {"index": 0, **reply, "finish_reason": reason}
        body = {**envelope(job, self.model, stream=False), "choices": [choice]}
        return self.finished(request, {**body, "usage": self.usage(job, n)})

    async def work(self, steps: int) -> bool:
        """Hold a slot for ``steps`` engine steps (tokens; an embedding request is one)."""
        async with self.slot():
            for _ in range(steps):
                await self.step()
        return True

    async def stream(self, job: Job, usage_comment: bool = False) -> AsyncGenerator[bytes, None]:
        chunks = Chunks(job, self.model)
        n, reason = self.planned(job)
        async with self.slot():
            if job.chat:
                yield chunks.start()
            for i in range(n):
                await self.step()
                yield chunks.token(token(i))
                self.crash_if_asked(job.prompt)  # resumed: the first token chunk went out
            self.crash_if_asked(job.prompt)  # only reached with no token at all
            self.served += 1
            yield chunks.finish(reason, self.usage(job, n))
            if usage_comment and not job.include_usage:  # as the real worker (handoff.py)
                usage = {"usage": self.usage(job, n)}
                yield USAGE_COMMENT + json.dumps(usage).encode() + b"\n\n"
        yield sse(b"[DONE]")

    async def embeddings(self, request: Request) -> Response:
        body = await read_body(request)
        self.require(embedding=True)
        inputs, fmt, dims = embedding_request(body, self.params.embedding_dims)
        counts = [count_tokens(text) for text in inputs]
        for count in counts:
            self.check_context(count, "input")
        if await until_disconnect(request.receive, self.work(1)) is None:
            return Response(status_code=499)  # never delivered: the client is gone
        self.crash_if_asked("\n".join(inputs))
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode(unit(embed(text, self.params.embedding_dims)[:dims]), fmt),
            }
            for i, text in enumerate(inputs)
        ]
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return self.finished(
            request, {"object": "list", "data": data, "model": self.model, "usage": usage}
        )


async def api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
        return ApiError(message, code="method_not_allowed", status=405).response()
    return ApiError(f"Unknown path {request.url.path}.", code="not_found", status=404).response()


async def client_gone(_: Request, __: Exception) -> Response:
    return Response(status_code=499)  # never delivered


async def unexpected(_: Request, __: Exception) -> Response:
    return ApiError("The fake worker failed unexpectedly (see its log).", status=500).response()


def create_app(params: FakeParams, model: str) -> Starlette:
    worker = FakeWorker(params, model)
    routes = [
        Route("/health", worker.health, methods=["GET"]),
        Route("/v1/models", worker.models, methods=["GET"]),
        Route("/v1/chat/completions", worker.generate, methods=["POST"]),
        Route("/v1/completions", worker.generate, methods=["POST"]),
        Route("/v1/embeddings", worker.embeddings, methods=["POST"]),
    ]
    if params.sleep:
        routes += [
            Route("/sleep", worker.sleep, methods=["POST"]),
            Route("/wake_up", worker.wake_up, methods=["POST"]),
        ]
    handlers = {
        ApiError: api_error,
        HTTPException: http_error,
        ClientDisconnect: client_gone,
        Exception: unexpected,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


# --- the process -----------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's server, which can leave SIGTERM ignored while it serves (it installs its
    own handler for SIGTERM, replacing an earlier SIG_IGN)."""

    def __init__(self, config: uvicorn.Config, ignore_sigterm: bool) -> None:
        super().__init__(config)
        self.ignore_sigterm = ignore_sigterm

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            if self.ignore_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            yield


def watch_stdin() -> None:
    """Exit the moment stdin reaches EOF (the gateway's pipe closed), as the real worker does."""

    def wait_for_eof() -> None:
        try:
            while os.read(0, 4096):  # raw fd: a thread blocked in sys.stdin aborts shutdown
                pass
        finally:
            handoff.lock.acquire()  # never between running a request and recording it
            os._exit(0)

    threading.Thread(target=wait_for_eof, name="stdin-watch", daemon=True).start()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.support.fake_worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--params", default="{}", help="FakeParams as a JSON object")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help="exit when stdin closes")
    p.add_argument("--spool-dir", type=Path, default=None, help="where batch results are spooled")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        params = FakeParams.model_validate_json(args.params)
    except ValidationError as exc:
        print(f"fake worker: bad --params: {exc}", file=sys.stderr)
        return EXIT_BAD_PARAMS
    if args.exit_on_stdin_eof:
        watch_stdin()
    if params.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handoff.configure(args.spool_dir)
    time.sleep(params.start_delay)  # "loading the model"
    if params.fail_start:
        print("fake worker: failed to load (fail_start)", file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    config = uvicorn.Config(
        create_app(params, args.model_name),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    Server(config, params.ignore_sigterm).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
