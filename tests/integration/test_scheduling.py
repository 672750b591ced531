"""Many models on one machine: memory budget, eviction, queues, keep-alive, reload."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer, pid_alive, wait_until

SLOTS, CONTEXT = 2, 2048
NEED = 64 << 20  # what the scheduler is told each fake model takes
# Every reply streams 5 ms tokens, as many as max_tokens asks for.
FAKE = {"tokens": 100_000, "token_delay": 0.005, "memory": NEED}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., CorralServer]]:
    """Start `corral serve` with fake-engine models installed under ``names``."""
    started: list[CorralServer] = []

    def launch(names: list[str], **settings: Any) -> CorralServer:
        install_fake_models(tmp_path, dict.fromkeys(names, FAKE))
        base = {"slots": SLOTS, "context_length": CONTEXT}
        srv = CorralServer(tmp_path, fake_engine=True, **{**base, **settings}).start()
        started.append(srv)
        return srv

    yield launch
    for srv in started:
        srv.stop()


def chat(srv: CorralServer, model: str, timeout: float = 60, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(srv.openai_url + "/chat/completions", json={**body, **extra}, timeout=timeout)


def ps(srv: CorralServer) -> dict[str, dict[str, Any]]:
    return {m["model"]: m for m in httpx.get(srv.url + "/admin/ps").json()["models"]}


def loaded(srv: CorralServer) -> set[str]:
    return {name for name, m in ps(srv).items() if m["state"] in ("ready", "draining")}


def long_stream(
    srv: CorralServer, model: str, started: threading.Event, tokens: int = 300
) -> threading.Thread:
    """A streaming request that holds a slot for a while (until ``tokens`` are done)."""

    def run() -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "long"}],
            "stream": True,
            "max_tokens": tokens,
            "ignore_eos": True,
        }
        with httpx.stream(
            "POST", srv.openai_url + "/chat/completions", json=body, timeout=120
        ) as r:
            for _ in r.iter_lines():
                started.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    return thread


def test_least_recently_used_model_is_evicted_when_a_third_needs_room(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve(["m1", "m2", "m3"], memory_budget=int(2.5 * NEED))
    assert chat(srv, "m1").status_code == 200
    assert chat(srv, "m2").status_code == 200
    assert loaded(srv) == {"m1:latest", "m2:latest"}
    pid2 = ps(srv)["m2:latest"]["pid"]
    assert chat(srv, "m1").status_code == 200  # m1 is now the more recently used
    assert chat(srv, "m3").status_code == 200
    assert loaded(srv) == {"m1:latest", "m3:latest"}
    assert wait_until(lambda: not pid_alive(pid2), 5)


def test_concurrent_cold_requests_cause_one_load(serve: Callable[..., CorralServer]) -> None:
    srv = serve(["m1"])
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: chat(srv, "m1"), range(8)))
    assert [r.status_code for r in replies] == [200] * 8
    assert srv.log().count("loading m1:latest") == 1


def test_loaded_model_is_not_blocked_by_a_long_request_to_another(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve(["m1", "m2"], slots=1)
    assert chat(srv, "m2").status_code == 200
    thread = long_stream(srv, "m1", threading.Event())
    began = time.monotonic()
    assert chat(srv, "m2").status_code == 200
    assert ps(srv)["m1:latest"]["slots"]["busy"] == 1  # m1's long request is still running
    assert time.monotonic() - began < 5
    thread.join()


def test_full_queue_gets_429_and_cancelled_waiters_leave_it(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve(["m1"], slots=1, max_queue=2)
    thread = long_stream(srv, "m1", threading.Event())
    waiting = [
        threading.Thread(target=chat, args=(srv, "m1"), kwargs={"timeout": 120}) for _ in range(2)
    ]
    for t in waiting:
        t.start()
    assert wait_until(lambda: ps(srv)["m1:latest"]["queued"] == 2, 10)
    full = chat(srv, "m1")
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "queue_full"
    thread.join()
    for t in waiting:
        t.join()

    thread = long_stream(srv, "m1", threading.Event())
    with pytest.raises(httpx.ReadTimeout):
        chat(srv, "m1", timeout=httpx.Timeout(60, read=0.5))  # gives up while queued
    assert wait_until(lambda: ps(srv)["m1:latest"]["queued"] == 0, 2)
    thread.join()


def test_model_too_large_for_the_budget_is_a_clear_507(serve: Callable[..., CorralServer]) -> None:
    srv = serve(["m1"], memory_budget="50MiB")
    reply = chat(srv, "m1")
    assert reply.status_code == 507
    message = reply.json()["error"]["message"]
    assert "needs" in message and "budget 50 MiB" in message
    assert httpx.get(srv.url + "/health").status_code == 200


def test_keep_alive_zero_unloads_after_the_request(serve: Callable[..., CorralServer]) -> None:
    srv = serve(["m1"])
    assert chat(srv, "m1", keep_alive="10m").status_code == 200
    entry = ps(srv)["m1:latest"]
    assert entry["keep_alive"] == 600 and entry["expires_at"] > time.time() + 500
    pid = entry["pid"]
    assert chat(srv, "m1", keep_alive=0).status_code == 200
    assert wait_until(lambda: "m1:latest" not in loaded(srv), 5)
    assert wait_until(lambda: not pid_alive(pid), 5)
    bad = chat(srv, "m1", keep_alive="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"


def test_preload_loads_in_the_background_and_ps_shows_memory(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve(["m1"], preload="m1")
    assert wait_until(lambda: "m1:latest" in loaded(srv), 30)
    entry = ps(srv)["m1:latest"]
    assert entry["preloaded"] and entry["expires_at"] is None
    assert entry["memory"]["estimated"] > 0 and entry["memory"]["actual"] > 0
    ollama = httpx.get(srv.url + "/api/ps").json()["models"][0]
    assert ollama["name"] == "m1:latest" and ollama["details"]["family"] == "llama"
    assert ollama["size"] == entry["memory"]["actual"]
    assert ollama["expires_at"].startswith("2318")


def test_reload_restarts_with_new_parameters_and_keeps_queued_requests(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve(["m1"], slots=1)
    thread = long_stream(srv, "m1", threading.Event(), tokens=400)
    old_pid = ps(srv)["m1:latest"]["pid"]
    results: list[httpx.Response] = []
    queued = threading.Thread(target=lambda: results.append(chat(srv, "m1", timeout=120)))
    queued.start()
    assert wait_until(lambda: ps(srv)["m1:latest"]["queued"] == 1, 10)
    reload = httpx.post(srv.url + "/admin/models/m1/reload", json={"slots": 3}, timeout=120)
    assert reload.status_code == 200, reload.text
    thread.join()
    queued.join()
    assert results[0].status_code == 200
    entry = ps(srv)["m1:latest"]
    assert entry["params"]["slots"] == 3 and entry["slots"]["total"] == 3
    assert entry["pid"] != old_pid and not pid_alive(old_pid)


def test_cli_ps_load_stop_reload(serve: Callable[..., CorralServer]) -> None:
    srv = serve(["m1"])
    env = {
        **os.environ,
        "CORRAL_HOME": str(srv.home),
        "CORRAL_PORT": str(srv.port),
        "COLUMNS": "200",
    }

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert "No model is loaded" in corral("ps").stdout
    assert corral("load", "m1").returncode == 0
    table = corral("ps").stdout
    assert "m1:latest" in table and "ready" in table and "0/2" in table
    assert corral("reload", "m1", "--slots", "4").returncode == 0
    assert "0/4" in corral("ps").stdout
    assert corral("stop", "m1").returncode == 0
    assert "No model is loaded" in corral("ps").stdout
    missing = corral("load", "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_interactive_requests_overtake_queued_batch_requests(
    serve: Callable[..., CorralServer],
) -> None:
    srv = serve(["m1"], slots=1, batch_keys="batch-secret")
    thread = long_stream(srv, "m1", threading.Event(), tokens=400)
    finished: list[str] = []

    def send(label: str, headers: dict[str, str]) -> None:
        body = {"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        r = httpx.post(
            srv.openai_url + "/chat/completions", json=body, headers=headers, timeout=120
        )
        assert r.status_code == 200
        finished.append(label)

    senders = [
        threading.Thread(target=send, args=("batch-header", {"X-Corral-Priority": "batch"})),
        threading.Thread(
            target=send,
            args=(
                "batch-key",
                {"Authorization": "Bearer batch-secret", "X-Corral-Priority": "interactive"},
            ),
        ),
    ]
    for t in senders:
        t.start()
    assert wait_until(lambda: ps(srv)["m1:latest"]["queued"] == 2, 10)
    senders.append(threading.Thread(target=send, args=("interactive", {})))
    senders[-1].start()
    assert wait_until(lambda: ps(srv)["m1:latest"]["queued"] == 3, 10)
    thread.join()
    for t in senders:
        t.join()
    assert finished[0] == "interactive"
    bad = httpx.post(
        srv.openai_url + "/chat/completions",
        headers={"X-Corral-Priority": "urgent"},
        json={"model": "m1", "messages": [{"role": "user", "content": "x"}]},
    )
    assert bad.status_code == 400 and "x-corral-priority" in bad.json()["error"]["message"]
