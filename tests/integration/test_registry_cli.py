"""``corral pull/list/show/cp/rm/lock/sync`` as a user runs them, with and without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import models
from tests.support.fake_hub import FakeHub
from tests.support.server import CorralServer

REPO = "org/tiny-GGUF"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_repo(
            REPO,
            {"Tiny-Q4_K_M.gguf": models.model_file(models.CHAT), "README.md": b"# tiny\n"},
        )
        yield h


def corral(
    *args: str, home: Path, hub: FakeHub, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CORRAL_HOME": str(home),
        "CORRAL_PORT": "9",  # nothing listens there: the commands work on the files
        "HF_ENDPOINT": hub.url,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pull_list_show_copy_remove_without_a_server(tmp_path: Path, hub: FakeHub) -> None:
    home = tmp_path / "home"
    done = corral("pull", f"hf.co/{REPO}", home=home, hub=hub)
    assert done.returncode == 0, done.stderr
    assert f"pulled hf.co/{REPO}:latest" in done.stdout
    listing = corral("list", home=home, hub=hub).stdout
    assert f"hf.co/{REPO}:latest" in listing and "gguf" in listing
    shown = json.loads(corral("show", f"hf.co/{REPO}", "--json", home=home, hub=hub).stdout)
    assert shown["source"] == f"hf.co/{REPO}" and len(shown["revision"]) == 40
    copied = corral("cp", f"hf.co/{REPO}", "tiny", home=home, hub=hub)
    assert copied.returncode == 0 and "copied" in copied.stdout
    removed = corral("rm", f"hf.co/{REPO}", home=home, hub=hub)
    assert removed.returncode == 0 and f"deleted hf.co/{REPO}:latest" in removed.stdout
    blob = home / "blobs" / f"sha256-{shown['files'][0]['sha256']}"
    assert blob.exists(), "the copy still uses it"
    corral("rm", "tiny", home=home, hub=hub)
    assert not blob.exists()
    missing = corral("rm", "tiny", home=home, hub=hub)
    assert missing.returncode == 1 and "tiny" in missing.stderr


def test_pull_goes_through_a_running_server(tmp_path: Path, hub: FakeHub) -> None:
    srv = CorralServer(tmp_path / "home")
    srv.env["HF_ENDPOINT"] = hub.url
    srv.start()
    try:
        env = {**os.environ, "CORRAL_PORT": str(srv.port), "CORRAL_HOME": str(tmp_path / "x")}
        done = subprocess.run(
            [sys.executable, "-m", "corral", "pull", f"hf.co/{REPO}:Q4_K_M"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        jobs = httpx.get(srv.url + "/admin/pulls").json()["pulls"]
        assert [(j["model"], j["state"]) for j in jobs] == [(f"hf.co/{REPO}:Q4_K_M", "completed")]
    finally:
        srv.stop()


def write_yaml(path: Path, models_: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump({"version": 1, "models": models_}, sort_keys=False))


def test_lock_then_sync_locked_round_trip(tmp_path: Path, hub: FakeHub) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    local = project / "embed.gguf"
    local.write_bytes(models.model_file(models.EMBED).read_bytes())
    write_yaml(
        project / "corral.yaml",
        {
            "chat": {
                "source": f"hf.co/{REPO}",
                "engine": "llamacpp",
                "slots": 2,
                "aliases": ["default"],
            },
            "embedder": {"source": "./embed.gguf", "keep_alive": "1h"},
        },
    )
    done = corral("lock", home=home, hub=hub, cwd=project)
    assert done.returncode == 0, done.stderr
    assert "(2 models)" in done.stdout
    lock = yaml.safe_load((project / "corral.lock").read_text())
    chat = lock["models"]["chat:latest"]
    # Local paths are relative to the lock file: the project directory can move.
    assert lock["models"]["embedder:latest"]["resolved"] == "./embed.gguf"
    assert chat["resolved"] == f"hf.co/{REPO}"
    assert chat["revision"] == httpx.get(f"{hub.url}/api/models/{REPO}").json()["sha"]
    assert chat["files"][0]["path"] == "Tiny-Q4_K_M.gguf"
    shown = json.loads(corral("show", "default", "--json", home=home, hub=hub).stdout)
    assert shown["name"] == "chat:latest" and shown["params"] == {"slots": 2}
    assert shown["engine"] == "llamacpp"

    # A new commit upstream changes the file; --locked still installs the locked bytes.
    hub.add_repo(REPO, {"Tiny-Q4_K_M.gguf": models.model_file(models.RAW)})
    corral("rm", "chat", home=home, hub=hub)
    synced = corral("sync", "--locked", home=home, hub=hub, cwd=project)
    assert synced.returncode == 0, synced.stderr
    again = json.loads(corral("show", "chat", "--json", home=home, hub=hub).stdout)
    assert again["files"][0]["sha256"] == chat["files"][0]["sha256"]
    assert "ok embedder:latest (matches the lock)" in synced.stdout

    # Drift between corral.yaml and the lock is an error under --locked.
    write_yaml(project / "corral.yaml", {"chat": {"source": f"hf.co/{REPO}:Q8_0"}})
    drift = corral("sync", "--locked", home=home, hub=hub, cwd=project)
    assert drift.returncode == 1 and "disagree" in drift.stderr
    assert "embedder:latest is in the lock but not declared" in drift.stderr


def test_locked_sync_refuses_bytes_that_differ_from_the_lock(tmp_path: Path, hub: FakeHub) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    write_yaml(project / "corral.yaml", {"m": {"source": f"hf.co/{REPO}"}})
    assert corral("lock", home=home, hub=hub, cwd=project).returncode == 0
    lock_text = (project / "corral.lock").read_text()
    real = json.loads(corral("show", "m", "--json", home=home, hub=hub).stdout)
    sha = real["files"][0]["sha256"]
    (project / "corral.lock").write_text(lock_text.replace(sha, "ab" * 32))
    corral("rm", "m", home=home, hub=hub)
    refused = corral("sync", "--locked", home=home, hub=hub, cwd=project)
    assert refused.returncode == 1 and "the lock says abababababab" in refused.stderr
    assert "m:latest" not in corral("list", home=home, hub=hub).stdout


def test_schema_errors_point_at_key_and_line(tmp_path: Path, hub: FakeHub) -> None:
    (tmp_path / "corral.yaml").write_text(
        "version: 1\nmodels:\n  chat:\n    source: hf.co/a/b\n    slot: 4\n    context: 12\n"
    )
    done = corral("sync", home=tmp_path / "home", hub=hub, cwd=tmp_path)
    assert done.returncode == 2
    assert "corral.yaml:5: models.chat.slot: unknown key 'slot'; did you mean 'slots'?" in (
        done.stderr
    )
    assert "corral.yaml:6: models.chat.context:" in done.stderr


def test_sync_sets_engine_params_and_refuses_a_bad_one(tmp_path: Path, hub: FakeHub) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    (project / "chat.gguf").write_bytes(models.model_file(models.CHAT).read_bytes())
    params = {"batch_size": 256, "flash_attention": "off"}
    write_yaml(project / "corral.yaml", {"m": {"source": "./chat.gguf", "params": params}})
    done = corral("sync", home=home, hub=hub, cwd=project)
    assert done.returncode == 0, done.stderr
    shown = json.loads(corral("show", "m", "--json", home=home, hub=hub).stdout)
    assert shown["params"] == params and shown["runs_on"] == "llamacpp"

    write_yaml(
        project / "corral.yaml",
        {"m": {"source": "./chat.gguf", "params": {"flash_attention": "sometimes"}}},
    )
    bad = corral("sync", home=home, hub=hub, cwd=project)
    assert bad.returncode == 1 and "flash_attention" in bad.stderr
    kept = json.loads(corral("show", "m", "--json", home=home, hub=hub).stdout)
    assert kept["params"] == params  # nothing stored


def test_sync_refuses_a_bad_engine_parameter_before_pulling(tmp_path: Path, hub: FakeHub) -> None:
    """A model declared for an engine (here a llama-server command with a misspelt
    macro) is checked by that engine before any byte is fetched, not at its first load."""
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    (project / "chat.gguf").write_bytes(models.model_file(models.CHAT).read_bytes())
    declared = {
        "source": "./chat.gguf",
        "engine": "command",
        "params": {"command": "llama-server -m ${MODEL_PATH} --port ${PROT}"},
    }
    write_yaml(project / "corral.yaml", {"ls": declared})
    bad = corral("sync", home=home, hub=hub, cwd=project)
    assert bad.returncode == 1 and "unknown macro ${PROT}" in bad.stderr.replace("\n", "")
    assert "ls:latest" not in corral("list", home=home, hub=hub).stdout
    declared["params"] = {"command": "llama-server -m ${MODEL_PATH} --port ${PORT}"}
    write_yaml(project / "corral.yaml", {"ls": declared})
    good = corral("sync", home=home, hub=hub, cwd=project)
    assert good.returncode == 0, good.stderr
    shown = json.loads(corral("show", "ls", "--json", home=home, hub=hub).stdout)
    assert shown["runs_on"] == "command" and shown["capabilities"] == ["completion", "chat"]
