"""The fit planner through ``/admin/plan`` and ``corral plan``, and its RAM prediction
against the RSS of real llama.cpp workers on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from corral.registry.store import Registry
from corral.registry.synthetic import SyntheticSpec
from tests.support.models import CHAT, model_file
from tests.support.server import CorralServer

QWEN3_NEXT = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3-next-80b-a3b"
# 53 MB of weights: big enough that the weights, their repacked copy and the KV cache
# matter beside the process itself.
MID = SyntheticSpec(name="plan-mid", n_embd=512, n_layer=8, n_ff=1536, context_length=4096, seed=5)
RUNS = {"small": (CHAT, 4096, 4), "mid": (MID, 2048, 1)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("plan-home")
    store = Registry(home)
    for name, (spec, context, slots) in RUNS.items():
        store.import_path(model_file(spec), name, params={"context": context, "slots": slots})
    store.close()
    srv = CorralServer(home, max_loaded_models=4).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", sorted(RUNS))
def test_predicted_ram_is_within_10_percent_of_the_workers_rss(
    server: CorralServer, name: str
) -> None:
    _, context, slots = RUNS[name]
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as client:
        client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    ps = {m["model"]: m for m in httpx.get(server.url + "/admin/ps").json()["models"]}
    measured = ps[f"{name}:latest"]["memory"]["actual"]
    asked = {"model": name, "gpu": 0, "ram": "16GiB", "context": context, "slots": slots}
    planned = httpx.post(server.url + "/admin/plan", json=asked, timeout=30)
    assert planned.status_code == 200, planned.text
    cpu = planned.json()["placements"][0]
    assert cpu["engine"] == "llama.cpp" and cpu["how"] == "CPU only"
    assert abs(cpu["ram_bytes"] / measured - 1) < 0.10, (cpu["ram_bytes"], measured)


def test_a_config_plans_through_the_api_and_bad_requests_get_400(server: CorralServer) -> None:
    config = json.loads((QWEN3_NEXT / "config.json").read_text())
    ask = {"config": config, "gpu": "24GiB", "ram": "120GiB", "context": 32768}
    reply = httpx.post(server.url + "/admin/plan", json=ask, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["summary"].startswith("Best: llama.cpp at Q4_K_M")
    both = httpx.post(server.url + "/admin/plan", json={**ask, "model": "small"})
    assert both.status_code == 400 and "either model" in both.text
    unknown = httpx.post(server.url + "/admin/plan", json={"model": "nope"})
    assert unknown.status_code == 404
    broken = httpx.post(server.url + "/admin/plan", json={"config": {"model_type": "x"}})
    assert broken.status_code == 400 and "Cannot plan this model" in broken.text


def test_corral_plan_prints_the_worked_example() -> None:
    env = {**os.environ, "CORRAL_PORT": "9", "COLUMNS": "200"}
    args = ["--gpu", "24GiB", "--ram", "120GiB", "--context", "32768"]
    shown = subprocess.run(
        [sys.executable, "-m", "corral", "plan", str(QWEN3_NEXT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "79.67B (3.87B active a token)" in shown.stdout
    assert '--override-tensor "_exps=CPU"' in shown.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "corral", "plan", str(QWEN3_NEXT), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(as_json.stdout)
    assert data["facts"]["kv_bytes_per_token"] == 24576 and data["facts"]["experts"] == 512
