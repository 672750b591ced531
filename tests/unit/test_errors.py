"""One error hierarchy, and no exception text in a 500: a request id instead."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import corral
from corral.api.ollama_http import ollama_errors
from corral.errors import CorralError
from corral.httputil import openai_error_handlers

MESSAGE = re.compile(
    r"Internal error \(request id (?P<id>[^)]+)\); the server log has the details\."
)
FRESH_ID = re.compile(r"req_[0-9a-f]{24}")
OPTIONAL_ENGINE_LIBRARIES = {"torch", "transformers", "sentence_transformers"}


async def _boom(request: Request) -> Response:
    raise RuntimeError("secret detail")


def _openai_message(body: Any) -> str:
    error = body["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "internal_error"
    message: str = error["message"]
    return message


def _ollama_message(body: Any) -> str:
    assert set(body) == {"error"}
    message: str = body["error"]
    return message


ROUTES: dict[str, Callable[[Any], str]] = {"/openai": _openai_message, "/ollama": _ollama_message}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = Starlette(
        routes=[Route("/openai", _boom), Route("/ollama", ollama_errors(_boom))],
        exception_handlers=openai_error_handlers(),
    )
    # Starlette re-raises an unhandled exception after answering (for the server to log).
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _request_id(
    client: TestClient, path: str, headers: Mapping[str, str | bytes] | None = None
) -> str:
    response = client.get(path, headers=headers)
    assert response.status_code == 500
    assert "secret detail" not in response.text
    assert "RuntimeError" not in response.text
    match = MESSAGE.fullmatch(ROUTES[path](response.json()))
    assert match is not None, response.text
    assert response.headers["X-Request-Id"] == match["id"]
    # The server closes the connection after an unhandled exception; the client is told,
    # so that it does not send its next request on a dead connection (issue 15).
    assert response.headers["Connection"] == "close"
    return match["id"]


@pytest.mark.parametrize("path", ROUTES)
def test_unexpected_error_answers_a_fresh_request_id_and_logs_the_details(
    client: TestClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="corral.http"):
        request_id = _request_id(client, path)
    assert FRESH_ID.fullmatch(request_id)
    assert _request_id(client, path) != request_id
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1
    assert f"GET {path}" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert "secret detail" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("path", ROUTES)
def test_a_sane_client_request_id_is_echoed(client: TestClient, path: str) -> None:
    given = "client-id 42/" + "x" * 115  # printable, 128 characters
    assert _request_id(client, path, {"X-Request-Id": given}) == given


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("given", [b"two\nlines", b"x" * 500, b"caf\xe9", b"tab\there", b""])
def test_an_insane_client_request_id_is_replaced(
    client: TestClient, path: str, given: bytes
) -> None:
    assert FRESH_ID.fullmatch(_request_id(client, path, {"X-Request-Id": given}))


def _subclasses(cls: type[CorralError]) -> Iterator[type[CorralError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_corral_error_is_defined_in_corral_errors() -> None:
    for module in pkgutil.walk_packages(corral.__path__, "corral."):
        if module.name.endswith(".__main__") or ".migrations" in module.name:
            continue  # scripts, and alembic's env.py, run rather than define
        if module.name.startswith(("corral.protocol.grpc", "corral.api.grpc_v2")):
            # Generated protobuf modules: importing them registers the V2 messages
            # (package "inference") in protobuf's one default pool, and tritonclient's
            # own copy, which later tests in this process import, would then clash.
            continue
        with warnings.catch_warnings():  # engine libraries warn about their own internals
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as exc:  # an optional engine's extra is not installed
                if exc.name not in OPTIONAL_ENGINE_LIBRARIES:
                    raise
    elsewhere = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _subclasses(CorralError)
        if cls.__module__ != "corral.errors"
    )
    assert elsewhere == [], "define every CorralError in corral/errors.py"
