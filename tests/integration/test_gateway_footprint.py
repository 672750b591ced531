"""The gateway stays small: no engine library (nor numpy) in its process, idle RSS
under 150 MB, after it has served a request and read a new model's header."""

from __future__ import annotations

import httpx

from tests.support import models
from tests.support.server import CorralServer

ENGINE_LIBRARIES = ("libllama", "libggml", "llama_cpp", "torch", "onnxruntime", "vllm", "numpy")


def test_gateway_loads_no_engine_library_and_stays_small(server: CorralServer) -> None:
    # Make sure a worker has served something, so the gateway has done real work.
    reply = httpx.post(
        server.openai_url + "/completions",
        json={"model": "test-chat", "prompt": "hi", "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    # Importing reads the GGUF header in the gateway (a pull does the same).
    imported = httpx.post(
        server.url + "/admin/models/import",
        json={"path": str(models.model_file(models.RAW)), "name": "footprint-import"},
        timeout=60,
    )
    assert imported.status_code == 201, imported.text
    assert imported.json()["info"]["vocab_size"] > 0
    removed = httpx.delete(server.url + "/admin/models/footprint-import", timeout=60)
    assert removed.status_code == 200, removed.text
    assert server.proc is not None
    pid = server.proc.pid
    with open(f"/proc/{pid}/maps") as f:
        mapped = f.read()
    loaded = [lib for lib in ENGINE_LIBRARIES if lib in mapped]
    assert loaded == [], f"gateway process maps {loaded}"
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert rss_kb < 150 * 1024, f"gateway RSS {rss_kb / 1024:.0f} MB"
