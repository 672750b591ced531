"""``/openapi.json`` and ``/docs``: the gateway's routes, described from the routes.

The document is made from the gateway's own route table (``spec.route``), and each
body schema is the JSON Schema of the pydantic model that route validates with, so the
document and the server cannot disagree. ``/docs`` is Swagger UI, served from files in
the package (``static/swagger-ui``, Apache-2.0): a local-first server's docs work
offline, where a CDN-loaded page would be blank.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from corral import __version__
from corral.api.spec import ANTHROPIC, OLLAMA, V2, DocumentedRoute, Operation
from corral.httputil import json_dumps

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"


# --- the error shapes, as each API writes them (corral.errors renders them) ----------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope; every route outside Ollama's and Anthropic's uses it."""

    error: OpenAIErrorDetail


class OllamaError(BaseModel):
    """Ollama's error body."""

    error: str


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error body."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class V2Error(BaseModel):
    """The Open Inference Protocol's error body."""

    error: str


ERROR_MODELS: dict[str, type[BaseModel]] = {
    OLLAMA: OllamaError,
    ANTHROPIC: AnthropicError,
    V2: V2Error,
}


def error_model(tag: str) -> type[BaseModel]:
    """The model of the error bodies the routes tagged ``tag`` answer with."""
    return ERROR_MODELS.get(tag, OpenAIError)


# --- the document ---------------------------------------------------------------------


def documented_routes(routes: Sequence[BaseRoute]) -> list[DocumentedRoute]:
    return [r for r in routes if isinstance(r, DocumentedRoute)]


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the documented routes among ``routes``."""
    documented = documented_routes(routes)
    refs, definitions = _schemas(documented)
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        path = route.path_format
        paths.setdefault(path, {})[route.method.lower()] = _operation(route, refs)
    tags = list(dict.fromkeys(r.operation.tag for r in documented))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Corral",
            "version": __version__,
            "description": (
                "A local-first model server. The OpenAI, Ollama and Anthropic routes "
                "follow those APIs; each answers errors in its own API's shape."
            ),
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


# (model, mode) -> {"$ref": ...}; keyed as pydantic keys it (models or dataclasses).
Refs = dict[tuple[Any, JsonSchemaMode], dict[str, Any]]


def _schemas(documented: list[DocumentedRoute]) -> tuple[Refs, dict[str, Any]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in documented:
        op = route.operation
        if op.body is not None:
            wanted[(op.body, "validation")] = None
        if op.reply is not None:
            wanted[(op.reply, "serialization")] = None
        wanted[(error_model(op.tag), "serialization")] = None
    refs, definitions = models_json_schema(list(wanted), ref_template=_REF)
    return dict(refs), dict(definitions)


def _operation(route: DocumentedRoute, refs: Refs) -> dict[str, Any]:
    op = route.operation
    result: dict[str, Any] = {
        "tags": [op.tag],
        "summary": op.summary,
        "operationId": _operation_id(route),
    }
    if op.description:
        result["description"] = _dedent(op.description)
    parameters = [_path_parameter(name, route) for name in route.param_convertors]
    parameters += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": text,
        }
        for name, text in op.query.items()
    ]
    if parameters:
        result["parameters"] = parameters
    body = _request_body(op, refs)
    if body is not None:
        result["requestBody"] = body
    result["responses"] = {
        "200": _success(op, refs),
        "default": {
            "description": f"An error, in the {op.tag} API's own shape.",
            "content": {
                "application/json": {"schema": refs[(error_model(op.tag), "serialization")]}
            },
        },
    }
    return result


def _path_parameter(name: str, route: Route) -> dict[str, Any]:
    spans_slashes = route.param_convertors[name].regex == ".*"  # {name:path}
    text = "May contain '/' (a model name such as hf.co/org/repo:tag)." if spans_slashes else ""
    parameter: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    if text:
        parameter["description"] = text
    return parameter


def _request_body(op: Operation, refs: Refs) -> dict[str, Any] | None:
    if op.body_media is not None:
        raw = op.body_media == "application/octet-stream"
        schema = {"type": "string", "format": "binary"} if raw else {"type": "object"}
        return {"required": True, "content": {op.body_media: {"schema": schema}}}
    if op.body is None:
        return None
    schema = refs[(op.body, "validation")]
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _success(op: Operation, refs: Refs) -> dict[str, Any]:
    schema: dict[str, Any] = (
        refs[(op.reply, "serialization")] if op.reply is not None else {"type": "object"}
    )
    if op.reply_media != "application/json":
        schema = {"type": "string"}
    content: dict[str, Any] = {op.reply_media: {"schema": schema}}
    description = "The answer."
    if op.stream is not None:
        content[op.stream] = {"schema": {"type": "string"}}
        description = f"The answer; with `stream`, a stream of {op.stream} events."
    return {"description": description, "content": content}


def _operation_id(route: DocumentedRoute) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", route.path_format).strip("_") or "root"
    return f"{route.method.lower()}_{words}"


def _dedent(text: str) -> str:
    lines = text.strip().splitlines()
    return "\n".join(line.strip() for line in lines)


# --- the routes -------------------------------------------------------------------------

_STATIC = "/docs/static"
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Corral API</title>
<link rel="stylesheet" href="{root}{static}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{root}{static}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "{root}/openapi.json", dom_id: "#swagger-ui"}});
</script>
</body>
</html>
"""


async def openapi_json(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "openapi", None) is None:  # built once: the routes do not change
        state.openapi = json_dumps(openapi_document(request.app.routes)).encode()
    return Response(state.openapi, media_type="application/json")


async def docs_page(request: Request) -> Response:
    root = request.scope.get("root_path", "")
    return HTMLResponse(_PAGE.format(root=root, static=_STATIC))


def _static_files() -> StaticFiles:
    directory = resources.files("corral.api").joinpath("static/swagger-ui")
    return StaticFiles(directory=str(directory))


def routes() -> list[BaseRoute]:
    """``/openapi.json``, ``/docs`` and Swagger UI's files."""
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Mount(_STATIC, app=_static_files()),
    ]
