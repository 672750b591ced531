"""Unbounded work from one client is bounded (issue 15): body size, pace, connections.

A server of this module's own with small limits (1 MiB bodies, 1 s header and body
timeouts, 64 connections) and the demo model, so each limit is reached in a test.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import CorralServer

LIMITS = {"max_body": "1MiB", "header_timeout": 1, "body_timeout": 1, "max_connections": 64}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("limits-home")
    server = CorralServer(home, demo_model=1, **LIMITS).start(timeout=120)
    yield server
    server.stop()


def chat_body(content: str) -> bytes:
    body = {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    return json.dumps(body).encode()


def raw_request(srv: CorralServer, head: bytes, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Send ``head`` + ``body`` on a socket and return what comes back until it closes."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=wait) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<still open>")
        return b"".join(chunks)


def test_a_body_over_the_limit_is_413_at_once_in_each_apis_shape(srv: CorralServer) -> None:
    big = chat_body("x" * (1 << 20))
    openai_reply = httpx.post(
        srv.url + "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert openai_reply.status_code == 413, openai_reply.text
    assert openai_reply.json()["error"]["code"] == "request_too_large"
    assert "CORRAL_MAX_BODY" in openai_reply.json()["error"]["message"]
    assert openai_reply.headers["connection"] == "close"
    ollama_reply = httpx.post(srv.url + "/api/chat", content=big)
    assert ollama_reply.status_code == 413 and set(ollama_reply.json()) == {"error"}
    anthropic_reply = httpx.post(srv.url + "/v1/messages", content=big)
    assert anthropic_reply.status_code == 413
    assert anthropic_reply.json()["error"]["type"] == "request_too_large"


def test_a_chunked_body_over_the_limit_is_413_when_it_passes_it(srv: CorralServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "demo", "messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"x" * 65536  # 4 MiB in all, with no Content-Length
        yield b'"}]}'

    reply = httpx.post(srv.url + "/v1/chat/completions", content=chunks())
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "request_too_large"


def test_a_prompt_too_long_for_any_context_is_refused_before_tokenizing(
    srv: CorralServer,
) -> None:
    reply = httpx.post(
        srv.url + "/v1/chat/completions",
        content=chat_body("lorem ipsum " * 80_000),  # ~1 MB, just under the body limit
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "longer than any text" in error["message"]  # the bound, not the tokenizer


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(
    srv: CorralServer,
) -> None:
    body = chat_body("hi")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    answer = raw_request(srv, head, body[:10])  # and then nothing more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and b"<still open>" not in answer


def test_headers_that_never_finish_are_cut_off(srv: CorralServer) -> None:
    started = time.monotonic()
    answer = raw_request(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert answer == b"", answer[:200]  # closed without a word, not left open
    assert time.monotonic() - started < 4.5
    silent = raw_request(srv, b"")  # a connection that never sends anything
    assert silent == b""


def test_stalled_connections_are_all_released(srv: CorralServer) -> None:
    body = chat_body("hi")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    stalled = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(head + body[:5])
        stalled.append(sock)
    try:
        for sock in stalled:
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 408")
    finally:
        for sock in stalled:
            sock.close()
    assert httpx.get(srv.url + "/health").status_code == 200


def test_connections_beyond_the_cap_get_503_not_a_hang(srv: CorralServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(70)]
    try:
        time.sleep(0.2)
        reply = httpx.get(srv.url + "/health", timeout=5)
        assert reply.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(srv.url + "/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_batch_file_line_longer_than_a_request_is_refused_at_that_line(
    srv: CorralServer,
) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
    }
    content = json.dumps(line).encode() + b"\n" + b"x" * (3 << 20)  # no newline: 3 MiB
    reply = httpx.post(
        srv.url + "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("b.jsonl", content)},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    assert "Line 2" in reply.json()["error"]["message"]
    assert "CORRAL_MAX_BODY" in reply.json()["error"]["message"]


def test_too_many_messages_or_tools_is_a_400_naming_which(srv: CorralServer) -> None:
    many = [{"role": "user", "content": "hi"}] * 4097
    openai_reply = httpx.post(
        srv.url + "/v1/chat/completions", json={"model": "demo", "messages": many}
    )
    assert openai_reply.status_code == 400
    assert openai_reply.json()["error"]["param"] == "messages"
    assert "CORRAL_MAX_MESSAGES" in openai_reply.json()["error"]["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    tools = httpx.post(
        srv.url + "/api/chat",
        json={"model": "demo", "messages": many[:1], "tools": [tool] * 513, "stream": False},
    )
    assert tools.status_code == 400 and "tools" in tools.json()["error"]
    claude = httpx.post(
        srv.url + "/v1/messages", json={"model": "demo", "max_tokens": 2, "messages": many}
    )
    assert claude.status_code == 400 and claude.json()["type"] == "error"
