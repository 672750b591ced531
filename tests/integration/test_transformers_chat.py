"""Text generation on the transformers engine: a tiny random Llama, made offline.

Greedy output through Corral equals ``model.generate`` on the same prompt; eight
streams are in progress at once (continuous batching); what the engine cannot apply
per request is a 400 naming it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from corral.registry.store import Registry  # noqa: E402
from tests.support.hf_models import tiny_llama  # noqa: E402
from tests.support.server import CorralServer  # noqa: E402

HI = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("hf-chat-home")
    registry = Registry(home)
    registry.import_path(tiny_llama(), "tiny")
    registry.close()
    server = CorralServer(home, threads=1, slots=8, context_length=256, dtype="float32").start()
    yield server
    server.stop()


def reference(messages: list[dict[str, str]], max_new_tokens: int) -> str:
    directory = tiny_llama()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    text: str = tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
    return text


def greedy_whole_and_streamed(server: CorralServer) -> tuple[Any, str]:
    """The same greedy 12-token chat, asked whole and streamed: (reply, streamed text)."""
    with openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0) as c:
        ask: dict[str, Any] = {"model": "tiny", "messages": HI, "max_tokens": 12, "temperature": 0}
        reply = c.chat.completions.create(**ask)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in c.chat.completions.create(**ask, stream=True)
            if chunk.choices
        )
    return reply, streamed


def test_greedy_output_equals_model_generate(srv: CorralServer) -> None:
    reply, streamed = greedy_whole_and_streamed(srv)
    expected = reference(HI, 12)
    assert reply.choices[0].message.content == expected == streamed
    assert reply.usage is not None and reply.usage.completion_tokens <= 12
    assert reply.choices[0].finish_reason in ("length", "stop")


def test_eight_streams_run_at_once(srv: CorralServer) -> None:
    events: list[tuple[int, str]] = []
    lock = threading.Lock()

    def stream(i: int) -> None:
        body = {
            "model": "tiny",
            "messages": HI,
            "max_tokens": 200,
            "stream": True,
            "temperature": 0.8,
            "ignore_eos": True,
        }
        with httpx.stream(
            "POST", srv.openai_url + "/chat/completions", json=body, timeout=120
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content"' in line:
                    with lock:
                        if not any(e == (i, "first") for e in events):
                            events.append((i, "first"))
        with lock:
            events.append((i, "done"))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    first_done = next(k for k, (_, what) in enumerate(events) if what == "done")
    started_before = {i for i, what in events[:first_done] if what == "first"}
    assert len(started_before) == 8, events  # every stream had output before any ended


def test_what_the_engine_cannot_apply_is_refused_by_name(srv: CorralServer) -> None:
    for param, value in (
        ("min_p", 0.1),
        ("frequency_penalty", 0.5),
        ("seed", 7),
        ("logprobs", True),
    ):
        body = {"model": "tiny", "messages": HI, "max_tokens": 2, param: value}
        reply = httpx.post(srv.openai_url + "/chat/completions", json=body, timeout=60)
        assert reply.status_code == 400, (param, reply.text)
        assert reply.json()["error"]["param"] == param
    hostile = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    refused = httpx.post(
        srv.openai_url + "/chat/completions",
        json={"model": "tiny", "messages": HI, "max_tokens": 2, "response_format": hostile},
        timeout=60,
    )
    assert refused.status_code == 400


def test_stop_strings_and_a_client_that_leaves(srv: CorralServer) -> None:
    expected = reference(HI, 12)
    stop = expected[3:6] if len(expected) > 6 else None
    if stop:
        with openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0) as c:
            reply = c.chat.completions.create(
                model="tiny",
                messages=HI,
                max_tokens=12,
                temperature=0,
                stop=[stop],  # type: ignore[arg-type]
            )
        assert reply.choices[0].message.content == expected[: expected.index(stop)]
        assert reply.choices[0].finish_reason == "stop"
    body = {"model": "tiny", "messages": HI, "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", srv.openai_url + "/chat/completions", json=body, timeout=60) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 3:
                break  # leaves mid-stream
    time.sleep(0.5)
    # The slot is free again: a new request is served.
    with openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0) as c:
        assert c.chat.completions.create(model="tiny", messages=HI, max_tokens=2).choices  # type: ignore[arg-type]


def test_the_memory_estimate_is_near_the_measured_rss(srv: CorralServer) -> None:
    with openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0) as c:
        c.chat.completions.create(model="tiny", messages=HI, max_tokens=2)  # type: ignore[arg-type]
    ps = {m["model"]: m for m in httpx.get(srv.url + "/admin/ps").json()["models"]}
    memory = ps["tiny:latest"]["memory"]
    assert memory["actual"] and 0.7 < memory["actual"] / memory["estimated"] < 1.3, memory


def test_structured_output_holds_the_model_to_the_schema(srv: CorralServer) -> None:
    """A random model, so only the grammar can make its output valid; two at once, one
    constrained and one free, share the batch."""
    import json

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "n": {"type": "integer", "minimum": 0, "maximum": 999},
        },
        "required": ["name", "n"],
        "additionalProperties": False,
    }
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    results: dict[str, str] = {}

    def ask(key: str, extra: dict[str, object]) -> None:
        body = {"model": "tiny", "messages": HI, "max_tokens": 80, "temperature": 0.9, **extra}
        reply = httpx.post(srv.openai_url + "/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        results[key] = reply.json()["choices"][0]["message"]["content"]

    workers = [
        threading.Thread(target=ask, args=("json", {"response_format": fmt})),
        threading.Thread(target=ask, args=("free", {})),
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    value = json.loads(results["json"])
    assert set(value) == {"name", "n"} and isinstance(value["n"], int)
    assert isinstance(value["name"], str) and len(value["name"]) <= 8
    try:
        free = json.loads(results["free"])
    except ValueError:
        free = None
    assert not isinstance(free, dict)  # the same model without the grammar: no object


def test_one_request_at_a_time_without_continuous_batching(tmp_path: Path) -> None:
    """The fallback for models continuous batching cannot run (here: switched off)."""
    registry = Registry(tmp_path)
    registry.import_path(tiny_llama(), "tiny")
    registry.close()
    settings = {"threads": 1, "context_length": 256, "dtype": "float32"}
    server = CorralServer(tmp_path, continuous_batching=0, **settings).start()
    try:
        whole, streamed = greedy_whole_and_streamed(server)
        assert whole.choices[0].message.content == reference(HI, 12) == streamed
        schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        refused = httpx.post(
            server.openai_url + "/chat/completions",
            json={"model": "tiny", "messages": HI, "max_tokens": 4, "response_format": schema},
            timeout=60,
        )
        assert refused.status_code == 400  # masks need the batch's processors
        worker_log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
        assert "one request at a time" in worker_log  # the worker says how it generates
    finally:
        server.stop()
