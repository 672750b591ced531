"""Workers as processes: crash mid-stream, failed loads, orphans, graceful shutdown."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import install_test_models
from tests.support.server import CorralServer, pid_alive, wait_until

CHAT = {"model": "test-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def own_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A server of this test's own, for tests that kill things."""
    install_test_models(tmp_path)
    srv = CorralServer(tmp_path, slots=4, context_length=2048, worker_stop_grace=2).start()
    yield srv
    srv.stop(signal.SIGKILL)


def load_chat_worker(server: CorralServer) -> int:
    r = httpx.post(
        server.openai_url + "/chat/completions", json={**CHAT, "max_tokens": 1}, timeout=60
    )
    assert r.status_code == 200, r.text
    pid: int = server.worker("test-chat:latest")["pid"]
    return pid


def test_worker_killed_mid_stream_gives_clear_error_then_recovers(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    client = openai.OpenAI(base_url=own_server.openai_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        **CHAT, max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
    )
    with pytest.raises(openai.APIError) as info:
        for n, _chunk in enumerate(stream):
            if n == 3:
                os.kill(pid, signal.SIGKILL)
    assert "crashed" in info.value.message and "-9" in info.value.message
    reply = client.chat.completions.create(**CHAT, max_tokens=3)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert own_server.worker("test-chat:latest")["pid"] != pid
    client.close()


def test_worker_killed_between_requests_is_restarted(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 5)
    assert load_chat_worker(own_server) != pid


def test_failed_load_reports_why(own_server: CorralServer) -> None:
    store_blob = next((own_server.home / "blobs").iterdir())
    record = install_test_models(own_server.home).get("test-raw")
    with record.path.open("r+b") as f:  # corrupt the blob on disk after import
        f.truncate(record.path.stat().st_size // 2)
    r = httpx.post(
        own_server.openai_url + "/chat/completions", json={**CHAT, "model": "test-raw"}, timeout=60
    )
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "exited with code 3" in error["message"]
    assert "llama" in error["message"].lower()  # llama.cpp's own words travel along
    assert store_blob.exists()
    assert load_chat_worker(own_server)  # other models are unaffected


def test_gateway_kill_9_leaves_no_orphan_worker(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    assert own_server.proc is not None
    os.kill(own_server.proc.pid, signal.SIGKILL)
    own_server.proc.wait()
    assert wait_until(lambda: not pid_alive(pid), timeout=5)


def test_sigterm_finishes_in_flight_stream_then_stops_workers(own_server: CorralServer) -> None:
    pid = load_chat_worker(own_server)
    received: list[str] = []
    done = threading.Event()

    def consume() -> None:
        body = {**CHAT, "max_tokens": 300, "stream": True, "ignore_eos": True}
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
    assert not pid_alive(pid)
