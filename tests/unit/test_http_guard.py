"""The Host, Origin and Content-Type guard (DNS rebinding, CSRF) and CORS, on a tiny app."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from corral.api.guard import Guard as GuardMiddleware
from corral.api.guard import GuardRules, host_name
from corral.settings import Settings

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
PATHS = ["/", "/api/x", "/v1/x", "/admin/x", "/v1/files"]


async def echo(request: Request) -> Response:
    return JSONResponse({"ok": True, "body": (await request.body()).decode()})


def client(**settings: Any) -> TestClient:
    app = Starlette(
        routes=[Route(path, echo, methods=METHODS) for path in PATHS],
        middleware=[Middleware(GuardMiddleware, settings=Settings(**settings))],
    )
    return TestClient(app, base_url="http://127.0.0.1:11435")


@pytest.fixture(scope="module")
def default() -> TestClient:
    return client()


@pytest.fixture(scope="module")
def cors() -> TestClient:
    return client(allowed_origins=["http://app.example:3000"])


def openai_code(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] is None
    code: str = error["code"]
    return code


def ollama_message(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    message: str = body["error"]
    return message


# --- Host ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:11435",
        "10.1.2.3:80",
        "[::1]",
        "[::1]:11435",
        "[2001:db8::1]:8080",
        "localhost",
        "LOCALHOST:11435",
        "localhost.:11435",
        "app.localhost:3000",
    ],
)
def test_ip_literals_and_localhost_are_allowed(default: TestClient, host: str) -> None:
    assert default.get("/v1/x", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:11435", "testserver", "localhost.evil.example", "::1", ":80"],
)
def test_other_hosts_are_refused(default: TestClient, host: str) -> None:
    response = default.get("/v1/x", headers={"Host": host})
    assert openai_code(response, 403) == "host_not_allowed"
    assert "CORRAL_ALLOWED_HOSTS" in response.json()["error"]["message"]


@pytest.mark.anyio
async def test_a_request_without_host_is_allowed() -> None:
    # HTTP/1.0 has no Host; TestClient always sends one, so call the middleware directly.
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Response("ok")(scope, receive, send)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/x", "headers": []}
    await GuardMiddleware(app, Settings())(scope, receive, send)
    assert sent[0]["status"] == 200
    assert GuardRules.from_settings(Settings()).host_allowed("")


def test_allowed_hosts_and_the_bind_name_are_allowed_whatever_the_port() -> None:
    c = client(allowed_hosts=["Corral.Lan", "box:9999"], host="gateway.internal")
    for host in ["corral.lan", "corral.lan:11435", "box", "box:1", "gateway.internal:80"]:
        assert c.get("/v1/x", headers={"Host": host}).status_code == 200, host
    assert c.get("/v1/x", headers={"Host": "evil.example"}).status_code == 403


def test_a_star_allows_any_host() -> None:
    c = client(allowed_hosts=["*"])
    assert c.get("/v1/x", headers={"Host": "evil.example"}).status_code == 200


def test_host_name_parsing() -> None:
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("127.0.0.1:1") == "" and host_name("[::1]") == ""
    assert host_name("[evil]") is None and host_name("a:b:c") is None and host_name(":1") is None


# --- Origin ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_state_changing_requests_without_origin_pass(default: TestClient, method: str) -> None:
    assert default.request(method, "/admin/x", json={}).status_code == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://[::1]:5173",
        "HTTP://LocalHost:1",
    ],
)
def test_loopback_origins_pass(default: TestClient, origin: str) -> None:
    assert default.post("/admin/x", json={}, headers={"Origin": origin}).status_code == 200


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example",
        "ftp://localhost",
        "http://localhost:3000/x",
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_other_origins_are_refused_on_state_changing_methods(
    default: TestClient, origin: str, method: str
) -> None:
    response = default.request(method, "/admin/x", json={}, headers={"Origin": origin})
    assert openai_code(response, 403) == "origin_not_allowed"
    assert "CORRAL_ALLOWED_ORIGINS" in response.json()["error"]["message"]


def test_reads_from_other_origins_pass_without_cors_headers(default: TestClient) -> None:
    response = default.get("/v1/x", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_allowed_origins_are_exact() -> None:
    c = client(allowed_origins=["http://App.example:3000/"])
    ok = c.post("/admin/x", json={}, headers={"Origin": "http://app.example:3000"})
    assert ok.status_code == 200
    for other in ["http://app.example", "https://app.example:3000", "http://app.example:3001"]:
        assert c.post("/admin/x", json={}, headers={"Origin": other}).status_code == 403


def test_the_servers_own_pages_may_change_things_on_any_allowed_host() -> None:
    """The dashboard served at http://gpu-box:11435/ui sends that Origin: its own, on a
    host the server already accepts. Another origin on the same host is still refused."""
    c = client(allowed_hosts=["gpu-box"])
    own = {"Host": "gpu-box:11435", "Origin": "http://gpu-box:11435"}
    assert c.post("/admin/x", json={}, headers=own).status_code == 200
    other_port = {"Host": "gpu-box:11435", "Origin": "http://gpu-box:8080"}
    assert openai_code(c.post("/admin/x", json={}, headers=other_port), 403) == (
        "origin_not_allowed"
    )
    stranger = {"Host": "gpu-box:11435", "Origin": "http://evil.example"}
    assert c.post("/admin/x", json={}, headers=stranger).status_code == 403


def test_a_star_allows_any_origin_but_not_null() -> None:
    c = client(allowed_origins=["*"])
    assert c.post("/admin/x", json={}, headers={"Origin": "http://x.example"}).status_code == 200
    assert c.post("/admin/x", json={}, headers={"Origin": "null"}).status_code == 403


# --- Content-Type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "Text/Plain ; x=y", "multipart/form-data"],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_simple_request_body_types_are_refused(
    default: TestClient, content_type: str, method: str
) -> None:
    response = default.request(
        method, "/admin/x", content=b'{"a": 1}', headers={"Content-Type": content_type}
    )
    assert openai_code(response, 415) == "unsupported_media_type"
    assert "application/json" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "application/x-www-form-urlencoded",
        None,
    ],
)
def test_json_form_and_absent_types_pass(default: TestClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = default.post("/admin/x", content=b'{"a": 1}', headers=headers)
    assert response.status_code == 200
    assert response.json()["body"] == '{"a": 1}'


def test_text_plain_is_not_checked_on_reads(default: TestClient) -> None:
    response = default.get("/v1/x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 200


def test_multipart_is_accepted_only_for_file_uploads(default: TestClient) -> None:
    files = {"file": ("a.jsonl", b"{}\n")}
    assert default.post("/v1/files", files=files, data={"purpose": "batch"}).status_code == 200
    assert default.post("/v1/x", files=files).status_code == 415
    put = default.put("/v1/files", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert put.status_code == 415


# --- error shapes -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/x"])
def test_ollama_paths_answer_in_ollamas_shape(default: TestClient, path: str) -> None:
    bad_host = default.get(path, headers={"Host": "evil.example"})
    assert "CORRAL_ALLOWED_HOSTS" in ollama_message(bad_host, 403)
    bad_origin = default.post(path, json={}, headers={"Origin": "http://evil.example"})
    assert "CORRAL_ALLOWED_ORIGINS" in ollama_message(bad_origin, 403)
    text = default.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
    assert "application/json" in ollama_message(text, 415)


@pytest.mark.parametrize("path", ["/v1/x", "/admin/x", "/apix", "/api"])
def test_other_paths_answer_in_openais_shape(default: TestClient, path: str) -> None:
    assert openai_code(default.get(path, headers={"Host": "evil.example"}), 403)


# --- CORS -----------------------------------------------------------------------------


def preflight(c: TestClient, origin: str, path: str = "/v1/x") -> Any:
    return c.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )


@pytest.mark.parametrize("origin", ["http://app.example:3000", "http://localhost:5173"])
def test_preflight_from_an_allowed_origin_when_cors_is_configured(
    cors: TestClient, origin: str
) -> None:
    response = preflight(cors, origin)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == origin
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "content-type, authorization"
    assert response.headers["vary"] == "Origin"


def test_preflight_from_another_origin_is_refused(cors: TestClient) -> None:
    response = preflight(cors, "http://evil.example")
    assert openai_code(response, 403) == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers
    assert "CORRAL_ALLOWED_ORIGINS" in ollama_message(preflight(cors, "null", "/api/x"), 403)


def test_allowed_cross_origin_answers_carry_cors_headers(cors: TestClient) -> None:
    origin = "http://app.example:3000"
    for response in [
        cors.get("/v1/x", headers={"Origin": origin}),
        cors.post("/v1/x", json={}, headers={"Origin": origin}),
        # a refusal too, so the page can read why
        cors.post("/v1/x", content=b"{}", headers={"Origin": origin, "Content-Type": "text/plain"}),
    ]:
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["vary"] == "Origin"
    other = cors.get("/v1/x", headers={"Origin": "http://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in cors.get("/v1/x").headers


def test_no_cors_unless_configured(default: TestClient) -> None:
    response = preflight(default, "http://localhost:5173")
    assert openai_code(response, 403) == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers
    answer = default.post("/v1/x", json={}, headers={"Origin": "http://localhost:5173"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    assert "vary" not in answer.headers
