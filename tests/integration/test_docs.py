"""Every shell example in docs/api/*.md runs against a real server with the demo model."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import CorralServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api"
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
BASE = "http://127.0.0.1:11435"
EXAMPLES = [
    pytest.param(block, id=f"{page.stem}-{i}")
    for page in sorted(DOCS.glob("*.md"))
    for i, block in enumerate(BLOCK.findall(page.read_text()))
]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    srv = CorralServer(tmp_path_factory.mktemp("docs-home"), demo_model=1).start(timeout=120)
    yield srv
    srv.stop()


def test_every_api_page_has_examples() -> None:
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages == {"openai", "ollama", "anthropic", "batch", "admin"}
    assert len(EXAMPLES) >= 12


@pytest.mark.parametrize("script", EXAMPLES)
def test_doc_example_runs(script: str, demo_server: CorralServer, tmp_path: Path) -> None:
    assert BASE in script
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(BASE, demo_server.url)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip()
