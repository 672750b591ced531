from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.registry.store import Registry
from tests.support import models
from tests.support.server import CorralServer

CHAT_MODEL = "test-chat:latest"
RAW_MODEL = "test-raw:latest"
EMBED_MODEL = "test-embed:latest"
SERVER_SETTINGS = {"slots": 8, "context_length": 2048}


@pytest.fixture(scope="session")
def chat_model_path() -> Path:
    return models.model_file(models.CHAT)


@pytest.fixture(scope="session")
def raw_model_path() -> Path:
    return models.model_file(models.RAW)


@pytest.fixture(scope="session")
def embed_model_path() -> Path:
    return models.model_file(models.EMBED)


def install_test_models(home: Path) -> Registry:
    store = Registry(home)
    store.import_file(models.model_file(models.CHAT), CHAT_MODEL)
    store.import_file(models.model_file(models.RAW), RAW_MODEL)
    store.import_file(models.model_file(models.EMBED), EMBED_MODEL)
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    """One real `corral serve` shared by the integration tests (8 slots, 2048 context)."""
    home = tmp_path_factory.mktemp("corral-home")
    install_test_models(home)
    # Some tests import through the API: from the model cache and their tmp_path.
    import_dirs = f"{models.CACHE},{tmp_path_factory.getbasetemp()}"
    srv = CorralServer(home, import_dirs=import_dirs, **SERVER_SETTINGS).start()
    yield srv
    srv.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
