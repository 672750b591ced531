"""Bad input gets a clear OpenAI-shaped error, and the server keeps working after it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.server import CorralServer, wait_until


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def server_still_works(server: CorralServer) -> Iterator[None]:
    yield
    reply = httpx.post(
        server.openai_url + "/chat/completions",
        json={
            "model": "test-chat",
            "messages": [{"role": "user", "content": "ok?"}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text


def post(server: CorralServer, path: str, **kwargs: object) -> httpx.Response:
    kwargs.setdefault("timeout", 60)
    return httpx.post(server.openai_url + path, **kwargs)  # type: ignore[arg-type]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_malformed_json(server: CorralServer) -> None:
    response = post(
        server,
        "/chat/completions",
        content=b'{"model": "test-chat", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    assert "no-such-model" in info.value.message


def test_negative_max_tokens(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-chat", messages=[{"role": "user", "content": "x"}], max_tokens=-5
        )
    assert info.value.param == "max_tokens"


def test_oversize_prompt(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="test-chat", messages=[{"role": "user", "content": "many words " * 3000}]
        )
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in info.value.message


def test_prompt_plus_max_tokens_over_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="test-chat", prompt="hello", max_tokens=5000)
    assert info.value.code == "context_length_exceeded"
    assert "5000 in the completion" in info.value.message


def test_wrong_capability_is_refused_before_loading(server: CorralServer) -> None:
    chat_on_embedder = post(
        server,
        "/chat/completions",
        json={"model": "test-embed", "messages": [{"role": "user", "content": "x"}]},
    )
    assert_openai_error(chat_on_embedder, 400, "unsupported_capability")
    embed_on_chat = post(server, "/embeddings", json={"model": "test-chat", "input": "x"})
    assert_openai_error(embed_on_chat, 400, "unsupported_capability")


def test_image_to_text_model(server: CorralServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    response = post(
        server,
        "/chat/completions",
        json={"model": "test-chat", "messages": [{"role": "user", "content": [image]}]},
    )
    error = assert_openai_error(response, 400, "unsupported_capability")
    assert "image_url" in error["message"]


def test_empty_embedding_input(server: CorralServer) -> None:
    response = post(server, "/embeddings", json={"model": "test-embed", "input": ["ok", ""]})
    assert_openai_error(response, 400)


def test_unknown_route_and_method(server: CorralServer) -> None:
    assert_openai_error(httpx.get(server.openai_url + "/nope"), 404)
    assert_openai_error(httpx.get(server.openai_url + "/chat/completions"), 405)


def test_bad_list_limits_are_400s_naming_limit(server: CorralServer) -> None:
    for path in ("/files", "/batches"):
        for limit in ("ten", "0", "1e9", "100001"):
            reply = httpx.get(server.openai_url + path, params={"limit": limit})
            assert assert_openai_error(reply, 400)["param"] == "limit", (path, limit)


def test_client_disconnect_mid_stream_frees_the_slot(server: CorralServer) -> None:
    body = {
        "model": "test-chat",
        "messages": [{"role": "user", "content": "long"}],
        "max_tokens": 2000,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", server.openai_url + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    worker_url = server.worker("test-chat:latest")["url"]

    def idle() -> bool:
        return httpx.get(worker_url + "/health").json()["slots_busy"] == 0

    # 2000 tokens take seconds; a freed slot shows within a fraction of one.
    assert wait_until(idle, timeout=1.0)


def test_client_disconnect_during_non_streamed_request_frees_the_slot(
    server: CorralServer,
) -> None:
    body = {
        "model": "test-chat",
        "messages": [{"role": "user", "content": "long"}],
        "max_tokens": 2000,
        "ignore_eos": True,
    }
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    worker_url = server.worker("test-chat:latest")["url"]
    assert wait_until(lambda: httpx.get(worker_url + "/health").json()["slots_busy"] == 0, 1.0)
    assert time.monotonic() - started < 3
