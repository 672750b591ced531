"""The command engine: someone else's OpenAI server as a Corral worker, end to end.

The server is llama-cpp-python's own (``python -m llama_cpp.server``), a real
third-party server that installs in seconds; llama.cpp's C++ ``llama-server`` has its
own test (``test_llama_server.py``) where it is built. Models are made with
``corral create`` as users make them, and called with the clients users run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import psutil
import pytest

from corral.registry.store import Registry
from tests.support.models import CHAT, model_file
from tests.support.server import CorralServer, pid_alive, wait_until

LLAMA_CPP_SERVER = (
    "${PYTHON} -m llama_cpp.server --model ${MODEL_PATH} --host ${HOST} --port ${PORT} "
    "--n_ctx ${CONTEXT_TOTAL} --n_threads ${THREADS} --n_threads_batch ${THREADS}"
)
BROKEN = "${PYTHON} -c \"import sys; print('no GPU found, giving up'); sys.exit(3)\""
NEVER_READY = "${PYTHON} -m http.server ${PORT} --bind ${HOST}"


def corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_PORT": "9", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_home(home: Path) -> None:
    store = Registry(home)
    store.import_path(model_file(CHAT), "chat")
    store.close()
    created = corral(
        home, "create", "ext", "--from", "chat", "--command", LLAMA_CPP_SERVER,
        "-p", "health_path=/v1/models", "-p", "slots=1",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "created ext:latest from chat (engine command)" in created.stdout
    for name, command, extra in [
        ("broken", BROKEN, []),
        ("never", NEVER_READY, ["-p", "health_path=/never", "-p", "start_timeout=3"]),
    ]:
        done = corral(home, "create", name, "--from", "chat", "--command", command, *extra)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("command-home")
    make_home(home)
    srv = CorralServer(home).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0) as c:
        yield c


def test_create_refuses_a_bad_command_and_keeps_nothing(tmp_path: Path) -> None:
    store = Registry(tmp_path)
    store.import_path(model_file(CHAT), "chat")
    store.close()
    done = corral(tmp_path, "create", "bad", "--from", "chat", "--command", "srv ${PROT}")
    assert done.returncode != 0
    assert "unknown macro ${PROT}" in done.stderr
    assert "bad:latest" not in corral(tmp_path, "list").stdout


def test_chat_answers_under_the_corral_name_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="ext", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert reply.model == "ext:latest"  # llama_cpp.server names the file; Corral renames
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason in ("length", "stop")


def completion_tokens_counted(server: CorralServer) -> float:
    text = httpx.get(server.url + "/metrics").text
    prefix = 'corral_tokens_total{kind="completion",model="ext:latest"} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_streams_pass_through_without_a_usage_chunk_unless_asked(
    server: CorralServer, client: openai.OpenAI
) -> None:
    before = completion_tokens_counted(server)
    chunks = list(
        client.chat.completions.create(
            model="ext",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=6,
            stream=True,
        )
    )
    assert chunks and all(c.model == "ext:latest" for c in chunks)
    assert all(c.usage is None for c in chunks)  # the gateway asked for it, and hid it
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The server sent no usage: the gateway counted its chunks for limits and metrics.
    texts = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert wait_until(lambda: completion_tokens_counted(server) - before == texts, 5)
    asked = list(
        client.chat.completions.create(
            model="ext",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # llama_cpp.server ignores stream_options: nothing is made up for the client.
    assert all(c.usage is None for c in asked)


def test_ollama_clients_stream_from_the_foreign_server(server: CorralServer) -> None:
    """llama_cpp.server gives no usage in streams (llama-server and vLLM do: their
    test checks the counts); the durations are the gateway's, never zero."""
    with ollama.Client(host=server.url, timeout=60) as client:
        parts = list(
            client.chat(
                model="ext",
                messages=[{"role": "user", "content": "Hi"}],
                options={"num_predict": 4},
                stream=True,
            )
        )
        assert parts[-1].done and parts[-1].model == "ext"
        assert "".join(p.message.content or "" for p in parts)
        assert parts[-1].eval_duration and parts[-1].eval_duration > 0
        whole = client.generate(model="ext", prompt="Hi", options={"num_predict": 3})
        assert whole.response and whole.eval_count == 3 and whole.prompt_eval_count


def test_a_server_that_fails_to_start_shows_its_last_words(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    assert caught.value.status_code == 500
    message = str(caught.value)
    assert "exited with code 3" in message and "no GPU found, giving up" in message


def test_a_server_that_never_gets_healthy_times_out_as_declared(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="never", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    assert "did not become ready within 3 s" in str(caught.value)


def test_a_server_killed_mid_stream_is_a_crash_and_the_next_request_restarts_it(
    server: CorralServer, client: openai.OpenAI
) -> None:
    client.chat.completions.create(
        model="ext", messages=[{"role": "user", "content": "warm"}], max_tokens=1
    )
    supervisor = server.worker("ext:latest")["pid"]
    (real,) = psutil.Process(supervisor).children()
    stream = client.chat.completions.create(
        model="ext",
        messages=[{"role": "user", "content": "Tell me a long story"}],
        max_tokens=2000,
        stream=True,
    )
    with pytest.raises(openai.APIError, match="crashed"):
        for i, _ in enumerate(stream):
            if i == 1:
                os.kill(real.pid, signal.SIGKILL)
    again = client.chat.completions.create(
        model="ext", messages=[{"role": "user", "content": "again"}], max_tokens=2
    )
    assert again.model == "ext:latest"
    assert server.worker("ext:latest")["pid"] != supervisor


def test_the_model_lists_and_shows_as_a_command_model(server: CorralServer) -> None:
    shown = httpx.get(server.url + "/admin/models/ext").json()
    assert shown["runs_on"] == "command" and shown["capabilities"] == ["completion", "chat"]
    assert shown["engine_params"]["health_path"] == "/v1/models"
    assert "${MODEL_PATH}" in json.dumps(shown["engine_params"]["command"])


def test_kill_9_of_the_gateway_leaves_no_server_behind(tmp_path: Path) -> None:
    make_home(tmp_path)
    srv = CorralServer(tmp_path).start()
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as c:
            c.chat.completions.create(
                model="ext", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        supervisor = psutil.Process(srv.worker("ext:latest")["pid"])
        processes = [supervisor, *supervisor.children(recursive=True)]
        assert len(processes) >= 2
    finally:
        srv.stop(signal.SIGKILL)
    pids = [p.pid for p in processes]
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 15), pids


def test_a_model_that_needs_vram_is_placed_on_a_gpu_and_sees_only_it(tmp_path: Path) -> None:
    """A fake device table (no GPU here): the model goes on the GPU with room, its
    server sees that GPU alone, and ps says so."""
    store = Registry(tmp_path)
    store.import_path(model_file(CHAT), "chat")
    params = {
        "engine": "command",
        "command": LLAMA_CPP_SERVER,
        "health_path": "/v1/models",
        "slots": 1,
        "vram_estimate": "10GiB",
    }
    store.import_path(model_file(CHAT), "gpu-model", params=params)
    store.close()
    table = [
        {"name": "busy card", "total": "24GiB", "used": "20GiB"},
        {"name": "free card", "total": "24GiB", "used": "1GiB"},
    ]
    srv = CorralServer(
        tmp_path,
        gpu_probe="tests.support.fake_gpus:probe",
        fake_gpus=json.dumps(table),
        fake_gpu_process=str(9 << 30),
    ).start()
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0) as c:
            c.chat.completions.create(
                model="gpu-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        (server,) = psutil.Process(srv.worker("gpu-model:latest")["pid"]).children()
        assert server.environ()["CUDA_VISIBLE_DEVICES"] == "1"
        (status,) = httpx.get(srv.url + "/admin/ps").json()["models"]
        assert status["memory"]["gpus"] == [1]
        assert status["memory"]["vram_estimated"] == 10 << 30
        assert status["memory"]["vram_actual"] == 9 << 30
        (ollama_ps,) = httpx.get(srv.url + "/api/ps").json()["models"]
        assert ollama_ps["size_vram"] == 9 << 30
        env = {**os.environ, "CORRAL_PORT": str(srv.port), "COLUMNS": "200"}
        shown = subprocess.run(
            [sys.executable, "-m", "corral", "ps"], env=env, capture_output=True, text=True
        )
        assert "10.0 GiB / 9.0 GiB (GPU 1)" in shown.stdout
    finally:
        srv.stop()
