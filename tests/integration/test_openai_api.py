"""The real server, spoken to with the official `openai` client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

from tests.conftest import CHAT_MODEL, EMBED_MODEL
from tests.support.server import CorralServer

pytestmark = pytest.mark.anyio
MESSAGES = [{"role": "user", "content": "Tell me about the quick brown fox."}]


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: CorralServer):  # type: ignore[no-untyped-def]
    async with openai.AsyncOpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as c:
        yield c


def test_models_list(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) >= {CHAT_MODEL, EMBED_MODEL}
    meta = models[CHAT_MODEL].model_extra["corral"]  # type: ignore[index]
    assert meta["random_weights"] is True and "gibberish" in meta["description"]
    assert meta["capabilities"] == ["completion", "chat"]
    assert client.models.retrieve("test-chat").id == CHAT_MODEL


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="test-chat",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.object == "chat.completion" and reply.model == CHAT_MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="test-chat", messages=MESSAGES, max_tokens=30, temperature=0
    )
    stream = client.chat.completions.create(
        model="test-chat",
        messages=MESSAGES,
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and whole.usage is not None
    # The same counts; cached_tokens may differ (the second request can hit the cache).
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(chunks[-1].usage, k) for k in counts] == [
        getattr(whole.usage, k) for k in counts
    ]


def test_completions_streaming_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model="test-chat", prompt="Once upon", max_tokens=20, temperature=0
    )
    assert whole.object == "text_completion" and whole.usage is not None
    pieces = list(
        client.completions.create(
            model="test-chat", prompt="Once upon", max_tokens=20, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_echo(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="test-chat", prompt="Echo me", max_tokens=3, echo=True)
    assert reply.choices[0].text.startswith("Echo me")


def test_greedy_is_deterministic_and_equals_llama_cpp(
    client: openai.OpenAI, chat_model_path: object
) -> None:
    prompt = "The server answers chat and completion requests"
    runs = [
        client.completions.create(model="test-chat", prompt=prompt, max_tokens=40, temperature=0)
        for _ in range(2)
    ]
    direct = llama_cpp.Llama(
        str(chat_model_path), n_ctx=2048, n_threads=1, verbose=False, flash_attn=True
    )
    expected = direct.create_completion(prompt, max_tokens=40, temperature=0.0)
    direct.close()
    assert runs[0].choices[0].text == runs[1].choices[0].text == expected["choices"][0]["text"]
    assert runs[0].usage.prompt_tokens == expected["usage"]["prompt_tokens"]  # type: ignore[union-attr]


def test_stop_sequences(client: openai.OpenAI) -> None:
    free = client.completions.create(
        model="test-chat",
        prompt="abc",
        max_tokens=40,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    text = free.choices[0].text
    stop = text[12:15]
    cut = client.completions.create(
        model="test-chat",
        prompt="abc",
        max_tokens=40,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].model_extra["stop_reason"] == stop  # vLLM's field
    assert "stop_reason" not in (free.choices[0].model_extra or {})  # absent when none hit


def test_seed_reproducible(client: openai.OpenAI) -> None:
    def run() -> str:
        r = client.chat.completions.create(
            model="test-chat", messages=MESSAGES, max_tokens=20, seed=1234, temperature=0.9
        )
        return r.choices[0].message.content or ""

    assert run() == run()


def test_embeddings(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model="test-embed", input="hello world")
    assert len(one.data) == 1 and one.data[0].index == 0
    vec = np.asarray(one.data[0].embedding)
    assert abs(np.linalg.norm(vec) - 1) < 1e-5
    many = client.embeddings.create(model="test-embed", input=["hello world", "other", "x y z"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert np.allclose(many.data[0].embedding, vec, atol=1e-5)
    assert many.usage.prompt_tokens > one.usage.prompt_tokens


def test_embeddings_base64_and_dimensions(server: CorralServer) -> None:
    body = {"model": "test-embed", "input": "hello", "encoding_format": "base64", "dimensions": 16}
    data = httpx.post(server.openai_url + "/embeddings", json=body).json()["data"][0]
    vec = np.frombuffer(base64.b64decode(data["embedding"]), dtype="<f4")
    assert vec.shape == (16,) and abs(np.linalg.norm(vec) - 1) < 1e-5


async def test_eight_concurrent_streams_are_in_progress_together(
    aclient: openai.AsyncOpenAI,
) -> None:
    """Every stream's first token arrives before any stream finishes (event order only)."""
    log: list[tuple[str, int]] = []

    async def one(i: int) -> None:
        stream = await aclient.chat.completions.create(
            model="test-chat",
            messages=[{"role": "user", "content": f"stream {i}"}],
            max_tokens=400,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        first = True
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first:
                log.append(("first", i))
                first = False
            if chunk.choices and chunk.choices[0].finish_reason:
                log.append(("finish", i))

    await asyncio.gather(*(one(i) for i in range(8)))
    firsts = [k for k, (kind, _) in enumerate(log) if kind == "first"]
    finishes = [k for k, (kind, _) in enumerate(log) if kind == "finish"]
    assert len(firsts) == len(finishes) == 8
    assert max(firsts) < min(finishes)


def test_timings_extension_only_when_asked(server: CorralServer) -> None:
    """`timings: true` adds engine time to the usage (what the Ollama API reports)."""
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 5, "temperature": 0}
    plain = httpx.post(server.openai_url + "/chat/completions", json=body, timeout=60).json()
    assert "timings" not in plain["usage"]
    timed = httpx.post(
        server.openai_url + "/chat/completions", json={**body, "timings": True}, timeout=60
    ).json()["usage"]["timings"]
    assert timed["prompt_ns"] > 0 and timed["generation_ns"] > 0
    assert 0 <= timed["prompt_tokens_cached"] < plain["usage"]["prompt_tokens"]
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}, "timings": True}
    with httpx.stream("POST", server.openai_url + "/chat/completions", json=stream) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: {")]
    last = json.loads(lines[-1].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"]["timings"]["generation_ns"] > 0
    # Same prompt again: the prefix cache serves all but the last prompt token.
    again = httpx.post(
        server.openai_url + "/chat/completions", json={**body, "timings": True}, timeout=60
    ).json()["usage"]
    assert again["timings"]["prompt_tokens_cached"] == again["prompt_tokens"] - 1
    # OpenAI's own field says the same, with or without the timings extension.
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1
    assert "cached_tokens" in plain["usage"]["prompt_tokens_details"]


def test_n_choices_whole_and_streamed(client: openai.OpenAI) -> None:
    """n > 1: each choice is its own sequence; a seed makes each reproducible."""
    args = {"model": "test-chat", "messages": MESSAGES, "max_tokens": 12, "seed": 7}
    whole = client.chat.completions.create(n=3, temperature=1.0, **args)  # type: ignore[call-overload]
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts = [c.message.content for c in whole.choices]
    assert len(set(texts)) > 1  # seeds 7, 8, 9
    single = client.chat.completions.create(temperature=1.0, **args)  # type: ignore[call-overload]
    assert single.choices[0].message.content == texts[0]
    assert whole.usage is not None and single.usage is not None
    assert whole.usage.prompt_tokens == single.usage.prompt_tokens  # counted once
    assert whole.usage.completion_tokens > single.usage.completion_tokens  # summed
    stream = client.chat.completions.create(
        n=3, temperature=1.0, stream=True, stream_options={"include_usage": True}, **args
    )  # type: ignore[call-overload]
    parts: dict[int, str] = {0: "", 1: "", 2: ""}
    finished: set[int] = set()
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            parts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
        usage = chunk.usage or usage
    assert finished == {0, 1, 2} and [parts[i] for i in range(3)] == texts
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    completions = client.completions.create(
        model="test-chat", prompt="Once upon", max_tokens=6, n=2, temperature=0
    )
    assert [c.index for c in completions.choices] == [0, 1]
    assert completions.choices[0].text == completions.choices[1].text  # greedy: the same
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(n=17, **args)  # type: ignore[call-overload]


def test_logprobs_chat_and_completions(client: openai.OpenAI) -> None:
    args = {"model": "test-chat", "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(logprobs=True, top_logprobs=3, **args)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content
    assert content is not None and len(content) == whole.usage.completion_tokens  # no end token
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token  # greedy takes the likeliest
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
        assert sum(np.exp(t.logprob) for t in token.top_logprobs) <= 1.0 + 1e-6
        assert bytes(token.bytes or []).decode(errors="replace") == token.token
    streamed = client.chat.completions.create(logprobs=True, top_logprobs=3, stream=True, **args)  # type: ignore[call-overload]
    pieces = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [(t.token, round(t.logprob, 4)) for t in pieces] == [
        (t.token, round(t.logprob, 4)) for t in content
    ]
    plain = client.chat.completions.create(**args)  # type: ignore[call-overload]
    assert plain.choices[0].logprobs is None
    legacy = client.completions.create(
        model="test-chat", prompt="Once upon", max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    lp = legacy.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == 6 and len(lp.top_logprobs or []) == 6
    assert lp.text_offset is not None and lp.text_offset[0] == len("Once upon")
    assert legacy.choices[0].text == "Once upon" + "".join(lp.tokens or [])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(top_logprobs=2, **args)  # type: ignore[call-overload]


def test_suffix_needs_fim_tokens_and_unsupported_options_are_named(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="test-chat", prompt="def f(", suffix="    return x")
    assert info.value.body["param"] == "suffix"  # type: ignore[index]
    for extra, param in (
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="test-chat", messages=MESSAGES, **extra)  # type: ignore[call-overload]
        assert info.value.body["param"] == param  # type: ignore[index]
