"""The bodies of issue 15's reproductions get 400s in each API's shape, never a 500.

Each was a 500 (or was silently coerced) before; the server must keep working after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.server import CorralServer

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def server_still_works(server: CorralServer) -> Iterator[None]:
    yield
    body = {"model": "test-chat", "messages": HI, "max_tokens": 2}
    reply = httpx.post(server.openai_url + "/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


def post_raw(server: CorralServer, path: str, raw: str | bytes) -> httpx.Response:
    content = raw.encode() if isinstance(raw, str) else raw
    headers = {"content-type": "application/json"}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60)


def openai_error(reply: httpx.Response, param: str | None = None) -> str:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    message: str = error["message"]
    return message


def with_lone_surrogate(body: dict[str, object]) -> str:
    """``body`` as JSON with each ``@`` written as a lone surrogate escape, ``\\ud800``:
    valid JSON, but not valid Unicode (json.dumps itself would never write one)."""
    return json.dumps(body).replace("@", "\\ud800")


@pytest.mark.parametrize("stream", ["false", "true"])
def test_lone_surrogate_in_chat_content(server: CorralServer, stream: str) -> None:
    body = {"model": "test-chat", "max_tokens": 2, "stream": stream == "true"}
    raw = with_lone_surrogate({**body, "messages": [{"role": "user", "content": "a@b"}]})
    message = openai_error(post_raw(server, "/v1/chat/completions", raw), "messages[0].content")
    assert "surrogate" in message


def test_lone_surrogate_in_a_model_name(server: CorralServer) -> None:
    raw = with_lone_surrogate({"model": "test-chat@", "messages": HI})
    openai_error(post_raw(server, "/v1/chat/completions", raw), "model")


def test_a_valid_surrogate_pair_is_an_ordinary_character(server: CorralServer) -> None:
    raw = (
        '{"model": "test-chat", "max_tokens": 2, '
        '"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    )
    assert post_raw(server, "/v1/chat/completions", raw).status_code == 200


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_lone_surrogate_through_ollama(server: CorralServer, path: str) -> None:
    body: dict[str, object] = {"model": "test-chat", "stream": False}
    if path == "/api/chat":
        body["messages"] = [{"role": "user", "content": "@"}]
    else:
        body["prompt"] = "@"
    reply = post_raw(server, path, with_lone_surrogate(body))
    assert reply.status_code == 400, reply.text
    assert "surrogate" in reply.json()["error"]  # Ollama's shape: a plain message


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"model": "test-chat", "messages": [], "x": ' + '{"a": ' * 5000 + "1" + "}" * 5001,
        '{"model": "test-chat", "messages": [], "x": ' + "[" * 500 + "]" * 500 + "}",
    ],
    ids=["100k-arrays", "5k-objects", "500-arrays"],
)
def test_deeply_nested_json_is_refused(server: CorralServer, raw: str) -> None:
    for path in ("/v1/chat/completions", "/api/chat", "/v1/messages"):
        reply = post_raw(server, path, raw)
        assert reply.status_code == 400, (path, reply.text)
        assert "nested more than" in reply.text


def test_schemas_nested_as_deep_as_real_ones_still_work(server: CorralServer) -> None:
    schema: dict[str, object] = {"type": "integer"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    body = {
        "model": "test-chat",
        "messages": HI,
        "max_tokens": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    }
    reply = httpx.post(server.openai_url + "/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("ids", [[999_999_999], [-5], [1, 2, 1 << 40]])
def test_prompt_token_ids_outside_the_vocabulary(server: CorralServer, ids: list[int]) -> None:
    body = {"model": "test-chat", "prompt": ids, "max_tokens": 2}
    reply = httpx.post(server.openai_url + "/completions", json=body, timeout=60)
    assert "vocabulary" in openai_error(reply, "prompt")


def test_embedding_token_ids_outside_the_vocabulary(server: CorralServer) -> None:
    body = {"model": "test-embed", "input": [[1, 2], [999_999_999]]}
    reply = httpx.post(server.openai_url + "/embeddings", json=body, timeout=60)
    assert "vocabulary" in openai_error(reply, "input[1]")


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", "5"), ("max_tokens", True), ("stream", "yes"), ("temperature", "0.5")],
)
def test_wrong_types_are_refused_not_coerced(
    server: CorralServer, field: str, value: object
) -> None:
    body = {"model": "test-chat", "messages": HI, "max_tokens": 2, field: value}
    reply = httpx.post(server.openai_url + "/chat/completions", json=body, timeout=60)
    assert field in openai_error(reply, field)


def test_a_batch_line_with_a_lone_surrogate_is_refused_at_upload(server: CorralServer) -> None:
    good = {
        "custom_id": "ok",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "test-chat", "messages": HI, "max_tokens": 2},
    }
    lines = [json.dumps({**good, "custom_id": f"ok-{i}"}) for i in range(50)]
    bad = {
        **good,
        "custom_id": "bad",
        "body": {"model": "test-chat", "messages": [{"content": "@"}]},
    }
    lines.insert(25, with_lone_surrogate(bad))
    content = "\n".join(lines).encode() + b"\n"
    with (
        openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as refused,
    ):
        client.files.create(file=("b.jsonl", content), purpose="batch")
    assert "Line 26" in str(refused.value) and "surrogate" in str(refused.value)
