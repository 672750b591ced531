"""Reference parsing and quant choice: pure functions, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import InvalidReference, ResolveError
from corral.registry.refs import parse_reference
from corral.registry.resolve import _choose_gguf

GGUFS = [
    "Model-F16.gguf",
    "Model-Q4_K_M.gguf",
    "Model-Q8_0.gguf",
    "big/Model-Q6_K-00001-of-00002.gguf",
    "big/Model-Q6_K-00002-of-00002.gguf",
]


def test_hub_gguf_reference() -> None:
    ref = parse_reference("hf.co/org/Repo-GGUF:Q8_0")
    assert (ref.kind, ref.repo, ref.selector) == ("hub_gguf", "org/Repo-GGUF", "Q8_0")
    assert ref.default_name == "hf.co/org/Repo-GGUF:Q8_0"
    assert parse_reference("huggingface.co/org/r").default_name == "hf.co/org/r:latest"


def test_whole_repo_url_and_path_references(tmp_path: Path) -> None:
    assert parse_reference("org/repo").kind == "hub_repo"
    assert parse_reference("org/repo").default_name == "org/repo:latest"
    url = parse_reference("https://example.com/files/TinyLlama.Q4_K_M.gguf?download=1")
    assert url.kind == "url" and url.default_name == "tinyllama.q4_k_m:latest"
    local = parse_reference("./x/My Model.gguf", base=tmp_path)
    assert local.kind == "path" and local.path == tmp_path / "x" / "My Model.gguf"
    assert local.default_name == "my-model:latest"


@pytest.mark.parametrize("bad", ["", "llama3", "hf.co/justorg", "https://host/", "a/b/c"])
def test_unrecognised_references_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(bad)


def test_quant_choice_like_ollama() -> None:
    assert _choose_gguf(GGUFS, None, "r") == ["Model-Q4_K_M.gguf"]
    assert _choose_gguf(GGUFS, "q8_0", "r") == ["Model-Q8_0.gguf"]
    assert _choose_gguf(GGUFS, "Model-F16.gguf", "r") == ["Model-F16.gguf"]
    assert _choose_gguf(GGUFS, "Q6_K", "r") == GGUFS[3:]
    with pytest.raises(ResolveError, match=r"available: .*Q4_K_M.*Q8_0"):
        _choose_gguf(GGUFS, "Q3_K_S", "r")
