"""``/openapi.json`` describes what the server really does, and ``/docs`` works offline.

Requests are built from the document itself and the answers are checked against the
schemas it declares, so a route, body model or error shape that drifts from the
document fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from starlette.routing import Mount

from corral.api.app import create_app
from corral.api.spec import DocumentedRoute
from corral.settings import Settings
from tests.support.server import CorralServer

DOCS_ROUTES = {"/openapi.json", "/docs"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    srv = CorralServer(tmp_path_factory.mktemp("openapi-home"), demo_model=1).start(timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def document(server: CorralServer) -> dict[str, Any]:
    reply = httpx.get(server.url + "/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    doc: dict[str, Any] = reply.json()
    return doc


def _conforms(document: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """Validate ``value`` against ``schema`` whose $refs point into the document."""
    rooted = {**schema, "components": document["components"]}
    errors = [e.message for e in Draft202012Validator(rooted).iter_errors(value)]
    assert not errors, (schema, value, errors[:3])


def _schema_of(document: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    content = document["paths"][path][method]["responses"][status]["content"]
    schema: dict[str, Any] = content["application/json"]["schema"]
    return schema


def test_the_document_is_valid_openapi_and_names_the_server(document: dict[str, Any]) -> None:
    validate_spec(document)
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"] == "Corral"
    tags = {t["name"] for t in document["tags"]}
    assert {"OpenAI", "Ollama", "Anthropic", "Files", "Batch", "Admin", "Health"} <= tags


def test_every_gateway_route_is_documented() -> None:
    app = create_app(Settings())
    undocumented = [
        getattr(r, "path", r)
        for r in app.routes
        if not isinstance(r, DocumentedRoute | Mount)
        and getattr(r, "path", "") not in DOCS_ROUTES
        # The dashboard's HTML pages are not API (docs/dashboard.md describes them).
        and not getattr(r, "path", "").startswith("/ui")
    ]
    assert not undocumented
    assert len([r for r in app.routes if isinstance(r, DocumentedRoute)]) >= 45


def test_body_schemas_are_the_models_the_routes_enforce(
    server: CorralServer, document: dict[str, Any]
) -> None:
    """Every documented JSON body with required fields: an empty object is refused with
    a 400 in the documented error shape, naming a field the document says is required."""
    components = document["components"]["schemas"]
    checked = 0
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
            required = components[ref].get("required", [])
            if not required:
                continue
            url = server.url + re.sub(r"\{[^}]+\}", "demo", path)
            reply = httpx.request(method.upper(), url, json={}, timeout=30)
            assert reply.status_code == 400, (method, path, reply.status_code, reply.text)
            _conforms(document, _schema_of(document, path, method, "default"), reply.json())
            assert any(name in reply.text for name in required), (path, reply.text)
            checked += 1
    assert checked >= 15


def test_answers_conform_to_the_documented_reply_schemas(
    server: CorralServer, document: dict[str, Any]
) -> None:
    chat = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=120,
    )
    assert chat.status_code == 200, chat.text
    _conforms(document, _schema_of(document, "/v1/chat/completions", "post", "200"), chat.json())
    completion = httpx.post(
        server.url + "/v1/completions",
        json={"model": "demo", "prompt": "Once", "max_tokens": 4, "logprobs": 2},
        timeout=120,
    )
    assert completion.status_code == 200, completion.text
    schema = _schema_of(document, "/v1/completions", "post", "200")
    _conforms(document, schema, completion.json())
    models = httpx.get(server.url + "/v1/models").json()
    _conforms(document, _schema_of(document, "/v1/models", "get", "200"), models)
    card = httpx.get(server.url + "/v1/models/demo").json()
    _conforms(document, _schema_of(document, "/v1/models/{name}", "get", "200"), card)


def test_each_api_answers_errors_in_its_documented_shape(
    server: CorralServer, document: dict[str, Any]
) -> None:
    cases = [
        ("post", "/v1/chat/completions", {"model": "nope", "messages": []}),
        ("post", "/api/chat", {"model": "nope", "messages": []}),
        ("post", "/v1/messages", {"model": "nope", "max_tokens": 1, "messages": []}),
    ]
    shapes = set()
    for method, path, body in cases:
        reply = httpx.request(method.upper(), server.url + path, json=body, timeout=30)
        assert reply.status_code in (400, 404), reply.text
        schema = _schema_of(document, path, method, "default")
        _conforms(document, schema, reply.json())
        shapes.add(schema["$ref"])
    assert len(shapes) == 3  # OpenAI's, Ollama's and Anthropic's are three shapes


def test_docs_page_loads_swagger_ui_from_the_server_itself(server: CorralServer) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    assert not re.search(r"(src|href)=\"https?://", page.text)  # nothing from a CDN
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text)
    assert len(assets) == 2
    for asset in assets:
        reply = httpx.get(server.url + asset)
        assert reply.status_code == 200, asset
        assert len(reply.content) > 100_000  # the real bundle, not a placeholder
    assert httpx.get(server.url + "/docs/static/nope.js").status_code == 404
