"""The engine seam: a second engine (the test-only fake) served by the same gateway code.

Nothing in the gateway knows the fake exists (``tests/support/fake_engine.py``): it is
declared by a descriptor, added with ``CORRAL_ENGINES`` and chosen by ``engine: fake``
in a model's parameters. These tests speak to it with the official ``openai`` and
``ollama`` clients, then use its script (slots, token delays, crashes, failed loads)
for what the seam promises: a request a worker never took is sent again to a new
worker; one it took is never sent twice; batch requests wait patiently behind a full
interactive queue; declared parameters are checked by the engine's own model.

Tests that kill workers have a server of their own; the others share one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from corral.scheduler.core import SETTLED_SECONDS
from tests.support.batches import chat_line, output_of, submit, wait_batch
from tests.support.fake_engine import install_fake_models
from tests.support.models import CHAT, model_file
from tests.support.server import CorralServer, pid_alive, wait_until

HI = [{"role": "user", "content": "hi"}]
REPLY = "t0 t1 t2 "  # the fake's reply with tokens=3
SHARED = {
    "text": {"tokens": 3, "slots": 3},
    "embed": {"embedding": True, "embedding_dims": 8},
    "patched": {"tokens": 3},
    "broken": {"fail_start": True},
}
RETRIED = "sending the request to a new worker"  # the service's log line for a retry


@pytest.fixture(scope="module")
def seam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    """One server for the tests that kill nothing: fake models, and one declared for an
    engine this server does not run."""
    home = tmp_path_factory.mktemp("seam-home")
    store = install_fake_models(home, SHARED)
    store.import_path(model_file(CHAT), "elsewhere", params={"engine": "nope"})
    store.close()
    srv = CorralServer(home, fake_engine=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(seam: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=seam.openai_url, api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., CorralServer]]:
    """A server of this test's own, with the fake models given (name -> FakeParams)."""
    started: list[CorralServer] = []

    def launch(models: dict[str, dict[str, Any]], **settings: Any) -> CorralServer:
        install_fake_models(tmp_path, models).close()
        srv = CorralServer(tmp_path, fake_engine=True, **settings).start()
        started.append(srv)
        return srv

    yield launch
    for srv in started:
        srv.stop(signal.SIGKILL)


def chat(srv: CorralServer, model: str, content: str = "hi", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(srv.openai_url + "/chat/completions", json=body, timeout=30)


def ps(srv: CorralServer) -> dict[str, dict[str, Any]]:
    """``/admin/ps``'s entries by model name."""
    return {m["model"]: m for m in httpx.get(srv.url + "/admin/ps").json()["models"]}


# --- a second engine through the same gateway code ------------------------------------


def test_openai_client_chat_stream_completions_and_embeddings(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="text", messages=HI)
    assert reply.model == "text:latest"
    assert reply.choices[0].message.content == REPLY
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3

    stream = client.chat.completions.create(
        model="text",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 3)

    completion = client.completions.create(model="text", prompt="once upon", max_tokens=2)
    assert completion.choices[0].text == "t0 t1 "
    assert completion.choices[0].finish_reason == "length"

    embedded = client.embeddings.create(model="embed", input=["the sky", "grass"])
    assert [d.index for d in embedded.data] == [0, 1]
    for item in embedded.data:
        assert len(item.embedding) == 8
        assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-6)
    assert embedded.data[0].embedding != embedded.data[1].embedding


def test_ollama_client_chat_generate_and_embed(seam: CorralServer, client: openai.OpenAI) -> None:
    with ollama.Client(host=seam.url, timeout=30) as c:
        reply = c.chat(model="text", messages=HI)
        assert reply.message.content == REPLY and reply.done and reply.eval_count == 3
        streamed = "".join(part.message.content or "" for part in c.chat("text", HI, stream=True))
        assert streamed == REPLY
        generated = c.generate(model="text", prompt="once upon")
        assert generated.response == REPLY and generated.done_reason == "stop"
        embedded = c.embed(model="embed", input=["the sky", "grass"])
    assert [len(e) for e in embedded.embeddings] == [8, 8]
    # The same worker answered both APIs: the same vectors.
    [again] = client.embeddings.create(model="embed", input="grass").data
    assert again.embedding == pytest.approx(embedded.embeddings[1], abs=1e-6)


def test_model_card_and_ps_show_the_engine_and_its_declared_params(seam: CorralServer) -> None:
    cards = {m: httpx.get(f"{seam.openai_url}/models/{m}").json() for m in ("text", "embed")}
    assert cards["text"]["corral"]["capabilities"] == ["completion", "chat"]
    assert cards["embed"]["corral"]["capabilities"] == ["embeddings"]
    assert chat(seam, "text").status_code == 200
    entry = ps(seam)["text:latest"]
    assert entry["engine"] == "fake" and entry["state"] == "ready"
    assert entry["params"]["slots"] == 3 and entry["slots"]["total"] == 3
    assert entry["params"]["tokens"] == 3 and entry["params"]["crash_on"] is None
    assert entry["memory"]["estimated"] == 64 << 20  # the fake's estimate, FakeParams.memory
    assert pid_alive(entry["pid"])
    shown = httpx.get(seam.url + "/admin/models/text").json()
    assert shown["engine"] == "fake" and shown["capabilities"] == ["completion", "chat"]


def test_embedding_model_cannot_chat(seam: CorralServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="embed", messages=HI)
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("unsupported_capability", "model")
    assert "embedding model" in error["message"]
    with pytest.raises(openai.BadRequestError, match="does not produce embeddings"):
        client.embeddings.create(model="text", input="x")
    with ollama.Client(host=seam.url, timeout=30) as c, pytest.raises(ollama.ResponseError) as err:
        c.chat(model="embed", messages=HI)
    assert err.value.status_code == 400 and "does not support chat" in err.value.error


def test_model_declared_for_an_engine_the_server_lacks_is_a_clear_400(seam: CorralServer) -> None:
    reply = chat(seam, "elsewhere")
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_capability", "model")
    assert "declared for the nope engine" in error["message"]
    assert "does not run" in error["message"] and "fake" in error["message"]
    ollama_reply = httpx.post(seam.url + "/api/chat", json={"model": "elsewhere", "messages": HI})
    assert ollama_reply.status_code == 400
    assert "elsewhere:latest" not in ps(seam)  # refused before anything was loaded


def test_ollama_names_the_engine_the_server_lacks(seam: CorralServer) -> None:
    reply = httpx.post(seam.url + "/api/chat", json={"model": "elsewhere", "messages": HI})
    assert reply.status_code == 400 and "nope" in reply.json()["error"]


def test_bad_declared_params_are_refused_and_nothing_is_stored(seam: CorralServer) -> None:
    before = httpx.get(seam.url + "/admin/models/patched").json()
    bad = httpx.patch(seam.url + "/admin/models/patched", json={"params": {"slots": "x"}})
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "slots" and "slots" in bad.json()["error"]["message"]
    assert httpx.get(seam.url + "/admin/models/patched").json() == before
    reply = chat(seam, "patched")  # loads with what was stored before: it answers at once
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == REPLY
    reload = httpx.post(seam.url + "/admin/models/patched/reload", json={"slots": 0}, timeout=30)
    assert reload.status_code == 400 and reload.json()["error"]["param"] == "slots"
    entry = ps(seam)["patched:latest"]
    assert entry["state"] == "ready" and entry["slots"]["total"] == entry["params"]["slots"] == 4


def test_failed_engine_start_reports_why(seam: CorralServer) -> None:
    reply = chat(seam, "broken")
    assert reply.status_code == 500, reply.text
    error = reply.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "exited with code 3" in error["message"]
    assert "failed to load (fail_start)" in error["message"]  # the engine's own words
    assert chat(seam, "text").status_code == 200  # other models are unaffected


# --- a request a worker never took is sent once more; one it took, never ------------------


def send(srv: CorralServer, api: str, model: str) -> str:
    """One request through ``api``; the reply's text (raises on an error status)."""
    if api == "chat":
        reply = chat(srv, model)
        reply.raise_for_status()
        return str(reply.json()["choices"][0]["message"]["content"])
    if api == "stream":
        body = {"model": model, "messages": HI, "stream": True}
        text = ""
        with httpx.stream("POST", srv.openai_url + "/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    assert "error" not in event, event
                    text += event["choices"][0]["delta"].get("content") or ""
        return text
    body = {"model": model, "messages": HI, "stream": False}
    reply = httpx.post(srv.url + "/api/chat", json=body, timeout=30)
    reply.raise_for_status()
    return str(reply.json()["message"]["content"])


@pytest.mark.parametrize("api", ["chat", "stream", "ollama"])
def test_worker_killed_just_before_a_request_is_replaced(
    serve: Callable[..., CorralServer], api: str
) -> None:
    # A model per try: three crashes of one model within a minute would back off.
    srv = serve({f"m{i}": {"tokens": 3} for i in range(3)})
    for i in range(3):
        model = f"m{i}:latest"
        assert send(srv, api, model) == REPLY
        pid = srv.worker(model)["pid"]
        os.kill(pid, signal.SIGKILL)  # then at once, dead or dying, noticed or not:
        assert send(srv, api, model) == REPLY, f"try {i}"
        assert srv.worker(model)["pid"] != pid
        assert ps(srv)[model]["crashes"] == 1


def test_worker_refusing_connections_gets_the_request_resent_to_a_new_one(
    serve: Callable[..., CorralServer],
) -> None:
    """A worker shutting down on its own (SIGTERM from elsewhere) stops listening while it
    finishes what it has: alive, but refusing connections. A request the gateway sends
    there was never taken, so it goes to a new worker; the old one's stream still ends."""
    srv = serve({"m": {"tokens": 100_000, "token_delay": 0.01}})
    assert chat(srv, "m", max_tokens=1).status_code == 200
    entry = ps(srv)["m:latest"]
    lines: list[str] = []

    def long_stream() -> None:
        body = {"model": "m", "messages": HI, "stream": True, "max_tokens": 50}
        with httpx.stream("POST", srv.openai_url + "/chat/completions", json=body) as r:
            lines.extend(line for line in r.iter_lines() if line)

    reader = threading.Thread(target=long_stream)
    reader.start()
    assert wait_until(lambda: len(lines) >= 3, 5)
    os.kill(entry["pid"], signal.SIGTERM)

    def refused() -> bool:
        try:
            httpx.get(entry["url"] + "/health", timeout=1)
        except httpx.ConnectError:
            return True
        except httpx.TransportError:  # taken just before the listener closed, then reset
            pass
        return False

    assert wait_until(refused, 5, interval=0.005) and pid_alive(entry["pid"])
    assert chat(srv, "m", max_tokens=3).json()["choices"][0]["message"]["content"] == REPLY
    assert srv.log().count(RETRIED) == 1
    assert ps(srv)["m:latest"]["pid"] != entry["pid"]
    reader.join(10)
    assert lines[-1] == "data: [DONE]" and '"finish_reason":"length"' in lines[-2]


def test_request_the_worker_took_is_never_sent_twice(serve: Callable[..., CorralServer]) -> None:
    srv = serve({"boom": {"crash_on": "boom", "tokens": 3}, "sboom": {"crash_on": "boom"}})
    reply = chat(srv, "boom", "boom please")
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "worker_crashed" and "exit code 70" in error["message"]
    # A retry would have started (and crashed) a second worker.
    assert ps(srv)["boom:latest"]["crashes"] == 1
    assert srv.log().count("worker for boom:latest started") == 1
    assert RETRIED not in srv.log()
    assert send(srv, "chat", "boom") == REPLY
    assert srv.log().count("worker for boom:latest started") == 2

    body = {"model": "sboom", "messages": [{"role": "user", "content": "boom"}], "stream": True}
    with httpx.stream("POST", srv.openai_url + "/chat/completions", json=body) as r:
        assert r.status_code == 200  # the stream had begun when the worker crashed
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    # Whether the first token left the dying worker's socket is up to the kernel; the
    # stream ends with the crash either way, and nothing after the first token came.
    assert events and "worker_crashed" in events[-1]
    assert not any('"content":"t1 "' in event for event in events)
    assert ps(srv)["sboom:latest"]["crashes"] == 1
    assert srv.log().count("worker for sboom:latest started") == 1


# --- batches are patient -------------------------------------------------------------------


def test_batch_waits_for_room_while_the_interactive_queue_is_full(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve({"m": {"slots": 1, "tokens": 100_000, "token_delay": 0.02}}, max_queue=1)
    assert chat(srv, "m", max_tokens=1).status_code == 200
    lines: list[str] = []

    def long_stream() -> None:
        # 200 tokens, 4 s: long enough to hold the slot through the checks on a busy CI box.
        body = {"model": "m", "messages": HI, "stream": True, "max_tokens": 200}
        with httpx.stream("POST", srv.openai_url + "/chat/completions", json=body) as r:
            lines.extend(line for line in r.iter_lines() if line)

    interactive = [threading.Thread(target=long_stream)]
    interactive[0].start()
    assert wait_until(lambda: ps(srv)["m:latest"]["slots"]["busy"] == 1, 10)
    queued: list[httpx.Response] = []
    interactive.append(threading.Thread(target=lambda: queued.append(chat(srv, "m", max_tokens=2))))
    interactive[1].start()
    assert wait_until(lambda: ps(srv)["m:latest"]["queued"] == 1, 10)
    full = chat(srv, "m", max_tokens=2)
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"

    with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as client:
        batch = submit(client, [chat_line(i, "m", max_tokens=1) for i in range(20)])
        # Batch requests wait in the line beside the full interactive queue...
        assert wait_until(lambda: ps(srv)["m:latest"]["queued"] > 1, 10)
        assert interactive[0].is_alive(), "the queue must still be full"
        assert chat(srv, "m", max_tokens=2).status_code == 429  # ...without taking its room
        done = wait_batch(client, batch.id, timeout=60)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (20, 0)
        results = output_of(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(20))
    assert {r["response"]["body"]["choices"][0]["message"]["content"] for r in results} == {"t0 "}
    for thread in interactive:
        thread.join(10)
    assert lines[-1] == "data: [DONE]" and queued[0].status_code == 200


def test_a_worker_killed_while_idle_does_not_hold_its_model_back(
    serve: Callable[..., CorralServer],
) -> None:
    """kill -9 of an idle worker (an operator, the OOM killer) is no crash loop: the
    next request starts a new worker at once, every time (issue 15: it took 28-30 s)."""
    srv = serve({"m": {"tokens": 3}})
    assert send(srv, "chat", "m:latest") == REPLY
    for _ in range(2):
        time.sleep(SETTLED_SECONDS + 0.5)  # idle, and well past loading
        pid = srv.worker("m:latest")["pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda p=pid: not pid_alive(p), 5)
        assert send(srv, "chat", "m:latest") == REPLY
        entry = ps(srv)["m:latest"]
        assert entry["state"] == "ready" and entry["retry_in"] is None
        assert entry["crashes"] == 0
