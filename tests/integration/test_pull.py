"""Pulling against a local stand-in for the Hugging Face Hub (``HF_ENDPOINT``).

The fake hub stands at the network boundary; ``huggingface_hub``, Corral's
downloader, the job table and the registry are all real, in a real server.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from corral.engines.transformers.descriptor import engine_installed
from corral.scheduler.launch import free_port
from tests.support import models
from tests.support.fake_hub import FakeHub
from tests.support.server import CorralServer

REPO = "org/tiny-GGUF"
QUANT_FILE = "Tiny-Q4_K_M.gguf"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_repo(
            REPO,
            {
                QUANT_FILE: models.model_file(models.CHAT),
                "Tiny-Q8_0.gguf": models.model_file(models.RAW),
                "README.md": b"# tiny\n",
            },
        )
        yield h


@pytest.fixture
def start(tmp_path: Path, hub: FakeHub) -> Iterator[Any]:
    servers: list[CorralServer] = []

    def launch(**settings: Any) -> CorralServer:
        srv = CorralServer(tmp_path / "home", slots=2, context_length=512, **settings)
        srv.env["HF_ENDPOINT"] = hub.url
        srv.env.pop("HF_TOKEN", None)
        servers.append(srv.start())
        return srv

    yield launch
    for srv in servers:
        srv.stop(signal.SIGKILL if srv.proc and srv.proc.poll() is None else signal.SIGTERM)


def pull(srv: CorralServer, **body: Any) -> httpx.Response:
    return httpx.post(srv.url + "/admin/pulls", json=body, timeout=30)


def wait_job(srv: CorralServer, job_id: str, until: Any = None, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{srv.url}/admin/pulls/{job_id}", timeout=10).json()
        done = until(job) if until else job["state"] not in ("queued", "running")
        if done:
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not get there: {job}\n{srv.log()[-3000:]}")


def test_pull_by_hub_reference_then_chat(start: Any, hub: FakeHub) -> None:
    srv = start()
    reply = pull(srv, model=f"hf.co/{REPO}")
    assert reply.status_code == 202, reply.text
    job = wait_job(srv, reply.json()["id"])
    assert job["state"] == "completed", job
    assert job["model"] == f"hf.co/{REPO}:latest"
    assert job["bytes_done"] == job["bytes_total"] == models.model_file(models.CHAT).stat().st_size
    shown = httpx.get(f"{srv.url}/admin/models/hf.co/{REPO}").json()
    commit = httpx.get(f"{hub.url}/api/models/{REPO}").json()["sha"]
    assert shown["revision"] == commit and shown["source"] == f"hf.co/{REPO}"
    assert shown["files"] == [
        {
            "path": QUANT_FILE,
            "sha256": sha256(models.model_file(models.CHAT)),
            "size": models.model_file(models.CHAT).stat().st_size,
        }
    ]
    client = OpenAI(base_url=srv.openai_url, api_key="x")
    chat = client.chat.completions.create(
        model=f"hf.co/{REPO}",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 4


def test_quant_selector_url_pull_and_bad_references(start: Any, hub: FakeHub) -> None:
    srv = start()
    job = wait_job(srv, pull(srv, model=f"hf.co/{REPO}:q8_0").json()["id"])
    assert job["state"] == "completed" and job["model"] == f"hf.co/{REPO}:q8_0"
    raw = models.model_file(models.RAW)
    url = f"{hub.url}/{REPO}/resolve/main/Tiny-Q8_0.gguf"  # redirects to the CDN
    reply = pull(srv, model=url, name="byurl", sha256=sha256(raw))
    job = wait_job(srv, reply.json()["id"])
    assert job["state"] == "completed", job
    assert httpx.get(f"{srv.url}/admin/models/byurl").json()["files"][0]["sha256"] == sha256(raw)

    bad = pull(srv, model="llama3")
    assert bad.status_code == 400 and "Cannot tell what" in bad.json()["error"]["message"]
    missing = wait_job(srv, pull(srv, model="hf.co/org/nope").json()["id"])
    assert missing["state"] == "failed" and "not found" in missing["error"]
    wrong_quant = wait_job(srv, pull(srv, model=f"hf.co/{REPO}:Q2_K").json()["id"])
    assert "available: Q4_K_M, Q8_0" in wrong_quant["error"]


def test_concurrent_pulls_of_one_model_share_one_job(start: Any, hub: FakeHub) -> None:
    hub.throttle(2_000_000)
    srv = start()
    first = pull(srv, model=f"hf.co/{REPO}")
    second = pull(srv, model=f"hf.co/{REPO}:latest")
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    wait_job(srv, first.json()["id"])
    assert hub.bytes_served(REPO, QUANT_FILE) == models.model_file(models.CHAT).stat().st_size


def test_checksum_mismatch_registers_nothing(start: Any, hub: FakeHub) -> None:
    hub.corrupt(REPO, QUANT_FILE)
    srv = start()
    job = wait_job(srv, pull(srv, model=f"hf.co/{REPO}").json()["id"])
    assert job["state"] == "failed" and "sha256 mismatch" in job["error"]
    assert "nothing was registered" in job["error"]
    assert httpx.get(f"{srv.url}/admin/models").json()["models"] == []
    assert list((srv.home / "downloads").glob("*.partial")) == []


def test_not_enough_disk_is_refused_before_downloading(start: Any, hub: FakeHub) -> None:
    hub.set_size_override(REPO, QUANT_FILE, 1 << 50)  # a 1 PiB file
    srv = start()
    job = wait_job(srv, pull(srv, model=f"hf.co/{REPO}").json()["id"])
    assert job["state"] == "failed"
    assert job["error"].startswith(f"Not enough disk space to pull hf.co/{REPO}:latest")
    assert hub.bytes_served(REPO, QUANT_FILE) == 0


def test_dropped_connection_resumes_within_the_job(start: Any, hub: FakeHub) -> None:
    size = models.model_file(models.CHAT).stat().st_size
    hub.drop_after(REPO, QUANT_FILE, 1_000_000)
    srv = start()
    job = wait_job(srv, pull(srv, model=f"hf.co/{REPO}").json()["id"])
    assert job["state"] == "completed", job
    assert hub.bytes_served(REPO, QUANT_FILE) == size  # nothing fetched twice
    ranges = [h.get("range") for m, p, h in hub.requests if m == "GET" and "_cdn" in p]
    assert ranges == [None, "bytes=1000000-"]


def test_kill_mid_file_then_restart_resumes_from_disk(start: Any, hub: FakeHub) -> None:
    size = models.model_file(models.CHAT).stat().st_size
    hub.throttle(1_000_000)
    srv = start()
    job_id = pull(srv, model=f"hf.co/{REPO}").json()["id"]
    wait_job(srv, job_id, until=lambda j: j["bytes_done"] > size // 3)
    srv.stop(signal.SIGKILL)
    [partial] = (srv.home / "downloads").glob("*.partial")
    on_disk = partial.stat().st_size
    assert 0 < on_disk < size
    hub.throttle(None)
    srv = start()
    job = wait_job(srv, job_id)
    assert job["state"] == "completed", job
    shown = httpx.get(f"{srv.url}/admin/models/hf.co/{REPO}").json()
    assert shown["files"][0]["sha256"] == sha256(models.model_file(models.CHAT))
    ranges = [h.get("range") for m, p, h in hub.requests if m == "GET" and "_cdn" in p]
    assert ranges[-1] == f"bytes={on_disk}-"
    # Bytes sent before the kill but not yet written are the only ones fetched twice.
    assert hub.bytes_served(REPO, QUANT_FILE) - size < 512 * 1024


def test_cancel_keeps_bytes_and_a_new_pull_resumes(start: Any, hub: FakeHub) -> None:
    hub.throttle(500_000)
    srv = start()
    job_id = pull(srv, model=f"hf.co/{REPO}").json()["id"]
    wait_job(srv, job_id, until=lambda j: j["bytes_done"] > 0)
    cancelled = httpx.delete(f"{srv.url}/admin/pulls/{job_id}").json()
    job = wait_job(srv, job_id)
    assert job["state"] == "cancelled", (cancelled, job)
    hub.throttle(None)
    again = pull(srv, model=f"hf.co/{REPO}").json()
    assert again["id"] != job_id
    assert wait_job(srv, again["id"])["state"] == "completed"
    size = models.model_file(models.CHAT).stat().st_size
    assert hub.bytes_served(REPO, QUANT_FILE) - size < 512 * 1024


def test_removing_a_loaded_model_stops_it_and_frees_its_blob(start: Any, hub: FakeHub) -> None:
    srv = start()
    wait_job(srv, pull(srv, model=f"hf.co/{REPO}").json()["id"])
    httpx.post(f"{srv.url}/admin/models/hf.co/{REPO}/load", timeout=60).raise_for_status()
    assert [w["model"] for w in srv.workers()] == [f"hf.co/{REPO}:latest"]
    reply = httpx.request("DELETE", f"{srv.url}/admin/models/hf.co/{REPO}", timeout=60)
    assert reply.json() == {"removed": [f"hf.co/{REPO}:latest"]}
    assert srv.workers() == []
    assert [p for p in (srv.home / "blobs").iterdir() if p.name.startswith("sha256-")] == []
    gone = httpx.post(
        srv.openai_url + "/chat/completions",
        json={"model": f"hf.co/{REPO}", "messages": [{"role": "user", "content": "x"}]},
    )
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def safetensors_bytes(shapes: dict[str, list[int]]) -> bytes:
    """A valid safetensors file of zeros (header: JSON table of dtype, shape, offsets)."""
    import json
    import struct

    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        n = 4
        for dim in shape:
            n *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def test_whole_repo_pull_of_safetensors_and_onnx(start: Any, hub: FakeHub) -> None:
    config = (
        b'{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2048,'
        b' "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "torch_dtype":'
        b' "float32", "vocab_size": 16}'
    )
    hub.add_repo(
        "org/tiny-llama",
        {
            "config.json": config,
            "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
            "model.safetensors": safetensors_bytes({"embed": [16, 8], "lm_head": [16, 8]}),
            "pytorch_model.bin": b"redundant weights",
            "README.md": b"# card",
        },
    )
    hub.add_repo("org/iris-onnx", {"model.onnx": b"\x08\x07onnx-graph", "config.json": b"{}"})
    srv = start()
    job = wait_job(srv, pull(srv, model="org/tiny-llama").json()["id"])
    assert job["state"] == "completed", job
    shown = httpx.get(f"{srv.url}/admin/models/org/tiny-llama").json()
    assert shown["format"] == "safetensors"
    assert [f["path"] for f in shown["files"]] == [
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
    ]
    info = shown["info"]
    assert (info["architecture"], info["parameters"], info["context_length"]) == (
        "LlamaForCausalLM",
        256,
        2048,
    )
    assert info["has_chat_template"] and info["quantization"] == "float32"
    tree = Path(shown["path"])
    assert json.loads((tree / "config.json").read_text())["hidden_size"] == 8
    job = wait_job(srv, pull(srv, model="org/iris-onnx").json()["id"])
    assert job["state"] == "completed", job
    onnx = httpx.get(f"{srv.url}/admin/models/org/iris-onnx").json()
    assert onnx["format"] == "onnx" and Path(onnx["path"]).read_bytes() == b"\x08\x07onnx-graph"
    # The transformers engine takes it. Without its extra, every request says how to
    # install it; with it, these stand-in weights (no tokenizer, two tensors) cannot
    # load, and the answer says so instead of hanging or a bare 500.
    refused = httpx.post(
        srv.openai_url + "/chat/completions",
        json={"model": "org/tiny-llama", "messages": [{"role": "user", "content": "x"}]},
        timeout=120,
    )
    error = refused.json()["error"]
    if engine_installed():
        assert refused.status_code == 500 and error["code"] == "model_load_failed", error
        assert "transformers" in error["message"]
    else:
        assert refused.status_code == 400 and "corral[transformers]" in error["message"]


def test_private_hub_needs_hf_token(tmp_path: Path) -> None:
    with FakeHub(token="hf_secret") as hub:
        hub.add_repo(REPO, {QUANT_FILE: models.model_file(models.EMBED)})
        for token, state in ((None, "failed"), ("hf_secret", "completed")):
            srv = CorralServer(tmp_path / f"home-{state}")
            srv.env["HF_ENDPOINT"] = hub.url
            srv.env.pop("HF_TOKEN", None)
            if token:
                srv.env["HF_TOKEN"] = token
            srv.start()
            try:
                job = wait_job(srv, pull(srv, model=f"hf.co/{REPO}").json()["id"])
                assert job["state"] == state, job
                if state == "failed":
                    assert "set HF_TOKEN" in job["error"]
            finally:
                srv.stop()


def test_serving_continues_while_a_pull_downloads(start: Any, hub: FakeHub) -> None:
    srv = start()
    wait_job(srv, pull(srv, model=f"hf.co/{REPO}:Q8_0").json()["id"])
    hub.throttle(400_000)  # the next pull takes ~10 s
    job_id = pull(srv, model=f"hf.co/{REPO}").json()["id"]
    wait_job(srv, job_id, until=lambda j: j["bytes_done"] > 0)
    client = OpenAI(base_url=srv.openai_url, api_key="x")
    for _ in range(3):
        reply = client.completions.create(model=f"hf.co/{REPO}:Q8_0", prompt="a", max_tokens=8)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    job = httpx.get(f"{srv.url}/admin/pulls/{job_id}").json()
    assert job["state"] == "running" and 0 < job["bytes_done"] < job["bytes_total"]
    assert job["rate"] > 0 and job["eta"] is not None


def test_an_unreachable_hub_is_one_clear_line(tmp_path: Path) -> None:
    """Issue 14: the error named no host, and the log got a 77-line traceback."""
    port = free_port()  # nothing listens there
    srv = CorralServer(tmp_path / "home")
    srv.env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    srv.start()
    try:
        job = wait_job(srv, pull(srv, model=f"hf.co/{REPO}").json()["id"])
        assert job["state"] == "failed"
        assert f"Could not reach 127.0.0.1:{port}: Connection refused" in job["error"]
        assert "HF_ENDPOINT" in job["error"] and "corral import" in job["error"]
        log = srv.log()
        assert "Traceback" not in log and job["error"] in log
    finally:
        srv.stop()
