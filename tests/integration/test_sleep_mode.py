"""Swapping two models on one GPU by sleeping, not reloading: the real gateway and
scheduler, fake workers with a sleep mode (vLLM's sleeps on CUDA only), and a fake
device table (there is no GPU here)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer

GiB = 1 << 30
# Each needs 14 GiB of a 24 GiB GPU: never both awake at once.
SLEEPY = {"tokens": 3, "vram": 14 * GiB, "sleep": True}
TABLE = [{"name": "one card", "total": "24GiB", "used": "0"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("sleep-home")
    install_fake_models(home, {"a": SLEEPY, "b": SLEEPY, "plain": {"tokens": 3}}).close()
    srv = CorralServer(
        home,
        fake_engine=True,
        gpu_probe="tests.support.fake_gpus:probe",
        fake_gpus=json.dumps(TABLE),
        vram_reserve="0",
    ).start()
    yield srv
    srv.stop()


def ask(server: CorralServer, model: str) -> str:
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    return reply.choices[0].message.content or ""


def states(server: CorralServer) -> dict[str, str]:
    return {m["model"]: m["state"] for m in httpx.get(server.url + "/admin/ps").json()["models"]}


def test_two_models_take_turns_on_one_gpu_by_sleeping(server: CorralServer) -> None:
    assert ask(server, "a") == "t0 t1 t2 "
    a = server.worker("a:latest")
    assert ask(server, "b") == "t0 t1 t2 "  # a sleeps: its process stays
    assert states(server) == {"a:latest": "sleeping", "b:latest": "ready"}
    assert httpx.get(a["url"] + "/health").json()["sleeps"] == 1
    assert ask(server, "a") == "t0 t1 t2 "  # b sleeps, a wakes: no reload
    assert server.worker("a:latest")["pid"] == a["pid"]
    health = httpx.get(a["url"] + "/health").json()
    assert (health["sleeps"], health["wakes"]) == (1, 1)
    assert states(server) == {"a:latest": "ready", "b:latest": "sleeping"}
    (status,) = [
        m for m in httpx.get(server.url + "/admin/ps").json()["models"] if m["model"] == "a:latest"
    ]
    assert status["memory"]["gpus"] == [0]


def test_a_model_without_a_sleep_mode_is_not_put_to_sleep(server: CorralServer) -> None:
    assert ask(server, "plain") == "t0 t1 t2 "  # needs no GPU: nothing is disturbed
    assert states(server)["plain:latest"] == "ready"
    unloaded = httpx.post(server.url + "/admin/models/b/unload", timeout=30)
    assert unloaded.status_code == 200  # a sleeping model unloads: it is stopped
    assert "b:latest" not in {k for k, v in states(server).items() if v != "stopped"}
