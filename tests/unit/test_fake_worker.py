"""The fake worker (``tests/support/fake_worker.py``) behaves as its FakeParams script it.

Each test runs it as the gateway does, a subprocess on a free loopback port, and talks to
it with httpx and the official ``openai`` client.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from corral.scheduler.launch import free_port
from tests.support.fake_params import FakeParams

ROOT = Path(__file__).resolve().parents[2]


class FakeWorkerProcess:
    """One ``python -m tests.support.fake_worker`` subprocess, its output in a log file."""

    def __init__(
        self,
        directory: Path,
        params: FakeParams,
        *,
        model: str = "fake",
        env: dict[str, str] | None = None,
        spool_dir: Path | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.log_path = directory / f"fake-worker-{self.port}.log"
        argv = [sys.executable, "-m", "tests.support.fake_worker", "--port", str(self.port)]
        argv += ["--model-name", model, "--params", params.model_dump_json()]
        if spool_dir is not None:
            argv += ["--spool-dir", str(spool_dir)]
        if stdin_pipe:
            argv.append("--exit-on-stdin-eof")
        environ = {k: v for k, v in os.environ.items() if k != "CORRAL_EXECUTION_LOG"}
        environ["PYTHONPATH"] = str(ROOT)  # this checkout's tests and corral, whatever else
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**environ, **(env or {})},
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def health(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(self.url + "/health", timeout=1.0)
        except httpx.TransportError:
            return None
        result: dict[str, Any] = response.json()
        return result

    def wait_ready(self, timeout: float = 5.0) -> FakeWorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fake worker exited {self.proc.returncode}:\n{self.log()}")
            if self.health() is not None:
                return self
            time.sleep(0.02)
        raise AssertionError(f"fake worker not ready in {timeout} s:\n{self.log()}")

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (health := self.health()) is not None and predicate(health):
                return
            time.sleep(0.01)
        raise AssertionError(f"/health never matched; last: {self.health()}")

    def exit_code(self, timeout: float = 5.0) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


Spawn = Callable[..., FakeWorkerProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start fake workers (not waiting for them); all are killed at the end of the test."""
    started: list[FakeWorkerProcess] = []

    def start(params: FakeParams, **kw: Any) -> FakeWorkerProcess:
        started.append(FakeWorkerProcess(tmp_path, params, **kw))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fake-text")


@pytest.fixture(scope="module")
def text_worker(text_dir: Path) -> Iterator[FakeWorkerProcess]:
    """A text model: 3 tokens per reply, 16-token context, spool dir and execution log."""
    env = {"CORRAL_EXECUTION_LOG": str(text_dir / "executed.log")}
    params = FakeParams(tokens=3, context_length=16)
    worker = FakeWorkerProcess(text_dir, params, env=env, spool_dir=text_dir / "spool")
    yield worker.wait_ready()
    worker.stop()


@pytest.fixture(scope="module")
def embed_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeWorkerProcess]:
    params = FakeParams(embedding=True, embedding_dims=8, context_length=16)
    worker = FakeWorkerProcess(tmp_path_factory.mktemp("fake-embed"), params, model="emb")
    yield worker.wait_ready()
    worker.stop()


def sse_events(body: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking OpenAI's exact framing."""
    assert body.endswith("data: [DONE]\n\n")
    events = body.split("\n\n")[:-1]
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    return [event.removeprefix("data: ") for event in events]


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


# --- generation ------------------------------------------------------------------------


def test_health_and_models(text_worker: FakeWorkerProcess) -> None:
    health = text_worker.health()
    assert health is not None
    assert health["status"] == "ok"
    assert health["model"] == "fake"
    assert health["busy"] == 0
    models = httpx.get(text_worker.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["fake"]
    assert "Uvicorn running on" in text_worker.log()


def test_chat(text_worker: FakeWorkerProcess) -> None:
    with text_worker.client() as client:
        reply = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hello there"}]
        )
    assert reply.object == "chat.completion"
    assert reply.model == "fake"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "t0 t1 t2 "
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 3)
    assert reply.usage.total_tokens == 6


def test_chat_stream(text_worker: FakeWorkerProcess) -> None:
    with text_worker.client() as client:
        stream = client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 "
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1


def test_stream_framing(text_worker: FakeWorkerProcess) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = httpx.post(text_worker.url + "/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e) for e in sse_events(response.text)[:-1]]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "t0 "},
        {"content": "t1 "},
        {"content": "t2 "},
        {},
    ]
    assert all("usage" not in e for e in events)  # only with stream_options.include_usage


@pytest.mark.parametrize(
    ("limits", "text", "reason"),
    [
        ({"max_tokens": 2}, "t0 t1 ", "length"),
        ({"max_completion_tokens": 1, "max_tokens": 3}, "t0 ", "length"),
        ({"max_tokens": 0}, "", "length"),
        ({"max_tokens": 3}, "t0 t1 t2 ", "stop"),
    ],
)
def test_max_tokens(
    text_worker: FakeWorkerProcess, limits: dict[str, int], text: str, reason: str
) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **limits}
    reply = httpx.post(text_worker.url + "/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["content"] == text
    assert reply["choices"][0]["finish_reason"] == reason
    assert reply["usage"]["completion_tokens"] == len(text.split())


def test_completions(text_worker: FakeWorkerProcess) -> None:
    with text_worker.client() as client:
        reply = client.completions.create(model="fake", prompt="once upon a time", max_tokens=2)
        assert reply.object == "text_completion"
        assert reply.choices[0].text == "t0 t1 "
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.prompt_tokens == 5
        chunks = list(client.completions.create(model="fake", prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "t0 t1 t2 "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_context_length_exceeded(text_worker: FakeWorkerProcess) -> None:
    fifteen = " ".join(["word"] * 15)  # 15 words + 1 = 16 tokens: exactly the context
    with text_worker.client() as client:
        ok = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": fifteen}]
        )
        assert ok.usage is not None and ok.usage.prompt_tokens == 16
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="fake",
                messages=[
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": fifteen},
                ],
            )
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    long_prompt = {"model": "fake", "prompt": fifteen + " more"}
    error = error_of(httpx.post(text_worker.url + "/v1/completions", json=long_prompt))
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "prompt"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("This model's maximum context length is 16 tokens.")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b'{"model": "fake", "messages": [', None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", b"\xff\xfe", None),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        ("/v1/chat/completions", b'{"model": "fake"}', "messages"),
        ("/v1/chat/completions", b'{"model": "fake", "messages": "hi"}', "messages"),
        ("/v1/completions", b'{"model": "fake"}', "prompt"),
        ("/v1/completions", b'{"model": "fake", "prompt": "x", "max_tokens": "2"}', "max_tokens"),
    ],
)
def test_bad_requests(
    text_worker: FakeWorkerProcess, path: str, body: bytes, param: str | None
) -> None:
    response = httpx.post(text_worker.url + path, content=body)
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_unknown_route_and_method(text_worker: FakeWorkerProcess) -> None:
    assert error_of(httpx.get(text_worker.url + "/v1/nope"), 404)["code"] == "not_found"
    response = httpx.get(text_worker.url + "/v1/chat/completions")
    assert error_of(response, 405)["code"] == "method_not_allowed"


# --- embeddings ------------------------------------------------------------------------


def test_embeddings(embed_worker: FakeWorkerProcess) -> None:
    body = {"model": "emb", "input": ["alpha", "beta", "alpha"]}
    response = httpx.post(embed_worker.url + "/v1/embeddings", json=body).json()
    assert response["object"] == "list"
    assert response["model"] == "emb"
    assert response["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert [d["index"] for d in response["data"]] == [0, 1, 2]
    assert {d["object"] for d in response["data"]} == {"embedding"}
    alpha, beta, again = (d["embedding"] for d in response["data"])
    assert len(alpha) == 8
    assert math.isclose(math.fsum(x * x for x in alpha), 1.0)
    assert alpha == again != beta  # deterministic, and per input

    packed = httpx.post(
        embed_worker.url + "/v1/embeddings", json={**body, "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<8f", raw) == pytest.approx(alpha, abs=1e-6)

    with embed_worker.client() as client:  # the client asks for base64 and decodes it
        short = client.embeddings.create(model="emb", input="alpha", dimensions=4)
    vector = short.data[0].embedding
    assert len(vector) == 4
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-6)
    norm = math.sqrt(math.fsum(x * x for x in alpha[:4]))
    assert vector == pytest.approx([x / norm for x in alpha[:4]], abs=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "emb"}, "input"),
        ({"model": "emb", "input": ""}, "input"),
        ({"model": "emb", "input": "x", "dimensions": 9}, "dimensions"),
        ({"model": "emb", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_embedding_requests(
    embed_worker: FakeWorkerProcess, body: dict[str, Any], param: str
) -> None:
    error = error_of(httpx.post(embed_worker.url + "/v1/embeddings", json=body))
    assert error["param"] == param


def test_capabilities_are_exclusive(
    text_worker: FakeWorkerProcess, embed_worker: FakeWorkerProcess
) -> None:
    with embed_worker.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "unsupported_capability"
    response = httpx.post(
        embed_worker.url + "/v1/completions", json={"model": "emb", "prompt": "x"}
    )
    assert error_of(response)["code"] == "unsupported_capability"
    with text_worker.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="fake", input="x")
    assert caught.value.code == "unsupported_capability"
    too_long = {"model": "emb", "input": ["ok", " ".join(["w"] * 16)]}
    error = error_of(httpx.post(embed_worker.url + "/v1/embeddings", json=too_long))
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input")


# --- recording finished requests ---------------------------------------------------------


def test_execution_log_and_batch_spool(text_worker: FakeWorkerProcess, text_dir: Path) -> None:
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    url = text_worker.url + "/v1/chat/completions"
    httpx.post(url, json=chat, headers={"x-corral-request-id": "req-plain"})
    httpx.post(url, json={**chat, "stream": True}, headers={"x-corral-request-id": "req-stream"})
    headers = {"x-corral-request-id": "req-batch", "x-corral-batch": "batch_abc123"}
    answer = httpx.post(url, json=chat, headers=headers).json()

    executed = (text_dir / "executed.log").read_text().splitlines()
    assert "req-plain" in executed
    assert "req-batch" in executed
    assert "req-stream" not in executed  # streams are never recorded, as in the real worker
    spooled = list((text_dir / "spool" / "batch_abc123").glob("spool-*.jsonl"))
    assert [p.name for p in spooled] == [f"spool-{text_worker.proc.pid}.jsonl"]
    entries = [json.loads(line) for line in spooled[0].read_text().splitlines()]
    assert entries == [{"id": "req-batch", "body": answer}]
    health = text_worker.health()
    assert health is not None and health["busy"] == 0


# --- slots, disconnects, crashes ---------------------------------------------------------


def test_slots_queue_and_disconnects_free_them(spawn: Spawn) -> None:
    worker = spawn(FakeParams(slots=1, tokens=1000, token_delay=0.01)).wait_ready()
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    url = worker.url + "/v1/chat/completions"
    queued: list[dict[str, Any]] = []

    with httpx.stream("POST", url, json={**chat, "stream": True}) as stream:
        lines = stream.iter_lines()
        while '"t0 "' not in next(lines):  # the stream holds the only slot
            pass
        waiter = threading.Thread(
            target=lambda: queued.append(httpx.post(url, json={**chat, "max_tokens": 1}).json())
        )
        waiter.start()
        worker.wait_until(lambda h: h["busy"] == 2 and h["waiting"] == 1)
    # the client left mid-stream: the slot goes to the waiting request at once
    waiter.join(timeout=2)
    assert queued[0]["choices"][0]["message"]["content"] == "t0 "
    worker.wait_until(lambda h: h["busy"] == 0 and h["served"] == 1)

    with pytest.raises(httpx.ReadTimeout):  # a whole response whose client gives up
        httpx.post(url, json=chat, timeout=0.2)
    worker.wait_until(lambda h: h["busy"] == 0)
    assert worker.health() == {
        "status": "ok",
        "model": "fake",
        "busy": 0,
        "waiting": 0,
        "served": 1,
    }


@pytest.mark.parametrize("kind", ["whole", "stream", "embedding"])
def test_crash_on(spawn: Spawn, tmp_path: Path, kind: str) -> None:
    executed = tmp_path / "executed.log"
    params = FakeParams(tokens=3, crash_on="boom", embedding=kind == "embedding")
    worker = spawn(params, env={"CORRAL_EXECUTION_LOG": str(executed)}).wait_ready()
    headers = {"x-corral-request-id": "req-crash"}
    messages: Any = [{"role": "user", "content": "this goes boom now"}]
    received: list[str] = []
    with worker.client() as client:
        if kind == "embedding":
            assert client.embeddings.create(model="fake", input="all fine").data
        else:
            fine = client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "all fine"}]
            )
            assert fine.choices[0].message.content == "t0 t1 t2 "
        with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
            if kind == "stream":
                chunks = client.chat.completions.create(
                    model="fake", messages=messages, stream=True, extra_headers=headers
                )
                for chunk in chunks:
                    received.append(chunk.choices[0].delta.content or "")
            elif kind == "whole":
                client.chat.completions.create(
                    model="fake", messages=messages, extra_headers=headers
                )
            else:
                client.embeddings.create(model="fake", input=["a", "boom"], extra_headers=headers)
    assert worker.exit_code() == 70
    assert "crashing (crash_on 'boom')" in worker.log()
    assert "".join(received) == ("t0 " if kind == "stream" else "")
    assert "req-crash" not in executed.read_text()


# --- the process: start, load failures, signals, stdin -----------------------------------


def test_fail_start(spawn: Spawn) -> None:
    worker = spawn(FakeParams(fail_start=True))
    assert worker.exit_code() == 3
    assert "fake worker: failed to load (fail_start)" in worker.log()
    assert "Uvicorn running" not in worker.log()


def test_bad_params_exit_2(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tests.support.fake_worker", "--port", "1", "--model-name", "x"]
    run = subprocess.run(
        [*argv, "--params", '{"slots": 0, "colour": "red"}'],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert run.returncode == 2
    assert "fake worker: bad --params" in run.stderr
    assert "slots" in run.stderr and "colour" in run.stderr


def test_slow_start(spawn: Spawn) -> None:
    started = time.monotonic()
    worker = spawn(FakeParams(start_delay=0.6))
    time.sleep(0.3)
    assert worker.health() is None  # still "loading": not listening yet
    worker.wait_ready()
    assert time.monotonic() - started >= 0.6


def test_sigterm(spawn: Spawn) -> None:
    plain = spawn(FakeParams())
    stubborn = spawn(FakeParams(ignore_sigterm=True))
    for worker in (plain, stubborn):
        worker.wait_ready()
        worker.proc.send_signal(signal.SIGTERM)
    # uvicorn's graceful shutdown, then it re-raises the signal: killed by SIGTERM
    assert plain.exit_code() == -signal.SIGTERM
    assert "Finished server process" in plain.log()
    time.sleep(0.3)
    assert stubborn.proc.poll() is None
    assert stubborn.health() is not None


def test_exit_on_stdin_eof(spawn: Spawn) -> None:
    worker = spawn(FakeParams(), stdin_pipe=True).wait_ready()
    assert worker.proc.stdin is not None
    worker.proc.stdin.close()
    assert worker.exit_code(timeout=2) == 0
