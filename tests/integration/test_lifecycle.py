"""Workers as processes: crash mid-stream, failed loads, orphans, graceful shutdown.

What is tested is the gateway's handling of its worker processes, so the workers are
the fake engine's (``tests/support/fake_engine.py``), scripted to stream slowly, fail
their load or shrug off SIGTERM. One test keeps llama.cpp: a corrupt GGUF must fail
to load with llama.cpp's own words in the error.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import install_test_models
from tests.support.fake_engine import install_fake_models
from tests.support.server import CorralServer, pid_alive, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MODELS = {
    # Replies as long as max_tokens asks, a token every 10 ms.
    "m": {"tokens": 100_000, "token_delay": 0.01},
    "broken": {"fail_start": True},
    "stubborn": {"tokens": 3, "ignore_sigterm": True},
}


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[CorralServer]:
    """A server of this test's own, for tests that kill things."""
    install_fake_models(tmp_path, MODELS).close()
    srv = CorralServer(tmp_path, fake_engine=True, slots=4, worker_stop_grace=0.5).start()
    yield srv
    srv.stop(signal.SIGKILL)


def load_chat_worker(server: CorralServer, model: str = "m") -> int:
    body = {**CHAT, "model": model, "max_tokens": 1}
    r = httpx.post(server.openai_url + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    pid: int = server.worker(f"{model}:latest")["pid"]
    return pid


def test_worker_killed_mid_stream_gives_clear_error_then_recovers(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    client = openai.OpenAI(base_url=own_server.openai_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(**CHAT, max_tokens=2000, stream=True)
    with pytest.raises(openai.APIError) as info:
        for n, _chunk in enumerate(stream):
            if n == 3:
                os.kill(pid, signal.SIGKILL)
    assert "crashed" in info.value.message and "-9" in info.value.message
    assert "while answering this request" in info.value.message
    reply = client.chat.completions.create(**CHAT, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "t0 t1 t2 "
    assert own_server.worker("m:latest")["pid"] != pid
    client.close()


def test_worker_killed_between_requests_is_restarted(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 5)
    assert load_chat_worker(own_server) != pid


def test_failed_load_reports_why(own_server: CorralServer) -> None:
    r = httpx.post(
        own_server.openai_url + "/chat/completions", json={**CHAT, "model": "broken"}, timeout=60
    )
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "exited with code 3" in error["message"]
    assert "failed to load (fail_start)" in error["message"]  # the engine's own words travel
    models = httpx.get(own_server.url + "/admin/models").json()["models"]
    [broken] = [m for m in models if m["name"] == "broken:latest"]  # still installed
    assert Path(broken["path"]).exists()
    assert load_chat_worker(own_server)  # other models are unaffected


def test_gateway_kill_9_leaves_no_orphan_worker(own_server: CorralServer) -> None:
    pids = [load_chat_worker(own_server), load_chat_worker(own_server, "stubborn")]
    assert own_server.proc is not None
    os.kill(own_server.proc.pid, signal.SIGKILL)
    own_server.proc.wait()
    # Even one that ignores SIGTERM: workers exit when the gateway's pipe closes.
    assert wait_until(lambda: not any(map(pid_alive, pids)), timeout=5)


def test_sigterm_finishes_in_flight_stream_then_stops_workers(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    received: list[str] = []
    done = threading.Event()

    def consume() -> None:
        body: dict[str, Any] = {**CHAT, "max_tokens": 50, "stream": True}
        with httpx.stream(
            "POST", own_server.openai_url + "/chat/completions", json=body, timeout=60
        ) as r:
            for line in r.iter_lines():
                if line:
                    received.append(line)
                    if len(received) == 3:
                        done.set()
        done.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert done.wait(30)
    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert own_server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    reader.join(30)
    assert received[-1] == "data: [DONE]"
    assert sum('"finish_reason":"length"' in line for line in received) == 1
    assert sum('"content":"t' in line for line in received) == 50  # nothing cut
    assert not pid_alive(pid)


def test_worker_ignoring_sigterm_is_killed_after_the_grace(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server, "stubborn")
    unload = httpx.post(own_server.url + "/admin/models/stubborn/unload", timeout=30)
    assert unload.status_code == 200, unload.text
    assert not pid_alive(pid)
    assert "worker for stubborn:latest ignored SIGTERM; killing it" in own_server.log()


def test_corrupt_gguf_fails_to_load_with_llama_cpps_words(tmp_path: Path) -> None:
    """The real engine: llama.cpp's own message travels with the load error."""
    record = install_test_models(tmp_path).get("test-raw")
    with record.path.open("r+b") as f:  # corrupt the blob on disk after import
        f.truncate(record.path.stat().st_size // 2)
    server = CorralServer(tmp_path, slots=1, context_length=256).start()
    try:
        body = {**CHAT, "model": "test-raw"}
        r = httpx.post(server.openai_url + "/chat/completions", json=body, timeout=60)
    finally:
        server.stop(signal.SIGKILL)
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "exited with code 3" in error["message"]
    assert "llama" in error["message"].lower()  # llama.cpp's own words travel along
    assert record.path.exists()
