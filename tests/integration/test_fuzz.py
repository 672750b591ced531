"""A fuzz pass over the OpenAI, Ollama, Anthropic, files and batch routes: no 500s.

Schemathesis reads the server's own /openapi.json and sends generated requests, valid
and invalid, to every operation of those APIs, checking only that none is answered
with a 5xx. The model is the demo one (real llama.cpp, random weights) with a small
context, so a generated max_tokens cannot make one request run long. Routes that
change the registry (delete, copy, pull) are left out: they would unmake the server
under test, and each has tests of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from corral.api.app import create_app
from corral.api.openapi import openapi_document
from corral.settings import Settings
from tests.support.server import CorralServer

# Per operation (30 operations, ~360 requests, ~15 s). A deeper, random pass:
# CORRAL_FUZZ_EXAMPLES=500 CORRAL_FUZZ_RANDOM=1 pytest -n0 tests/integration/test_fuzz.py
EXAMPLES = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "12"))
RANDOM = os.environ.get("CORRAL_FUZZ_RANDOM") == "1"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    server = CorralServer(home, demo_model=1, context_length=256).start(timeout=120)
    yield server
    server.stop()


# The document the server serves at /openapi.json (test_openapi.py checks they are the
# same routes), built here so that the operations are known when tests are collected.
schema = (
    schemathesis.openapi.from_dict(openapi_document(create_app(Settings()).routes))
    .include(tag_regex="^(OpenAI|Ollama|Anthropic|Files|Batch|Health)$")
    .exclude(path_regex="^/api/(delete|copy|pull)$")
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not RANDOM,  # in CI, the same requests every run: failures reproduce
)
def test_no_generated_request_gets_a_server_error(
    case: schemathesis.Case, fuzz_server: CorralServer
) -> None:
    case.call_and_validate(base_url=fuzz_server.url, checks=[not_a_server_error], timeout=60)
