"""Batch API throughput vs the same requests from an 8-way client, in one run.

    python bench/batch.py                       # 50,000 requests on a tiny model
    python bench/batch.py --model 120m --requests 5000

Each request is a short chat prompt asking for 16 new tokens (ignore_eos, so every
request does the same work). The same server (8 slots, 1 llama.cpp thread) runs
first the batch (upload, create, poll until completed), then the same requests
sent by 8 concurrent clients straight at /v1/chat/completions. The gateway's RSS is
sampled every 0.2 s during the batch: the job must stream, not load. Results go to
bench/out/batch-<model>-<n>.json and are summarised for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.registry.store import Registry  # noqa: E402
from corral.registry.synthetic import SyntheticSpec, write_model  # noqa: E402
from corral.scheduler.launch import free_port  # noqa: E402

CACHE = Path(os.environ.get("CORRAL_BENCH_CACHE", Path.home() / ".cache" / "corral-bench"))
TINY = SyntheticSpec(
    name="bench-tiny",
    n_embd=64,
    n_layer=2,
    n_head=4,
    n_head_kv=4,
    n_ff=128,
    context_length=512,
    seed=11,
    can_end=False,
)
NEW_TOKENS = 16
SLOTS = 8


def model_file(which: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    if which == "tiny":
        path = CACHE / "bench-tiny.gguf"
        if not path.exists():
            write_model(path, TINY)
        return path
    sys.path.insert(0, str(ROOT / "bench"))
    from serving import build_models  # the 134M model of bench/serving.py

    return build_models()["q4_k_m"]


def request_body(i: int) -> dict[str, Any]:
    return {
        "model": "bench",
        "messages": [{"role": "user", "content": f"Request {i}: say something short."}],
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }


def start_server(
    home: Path, extra_env: dict[str, str] | None = None, log_path: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A server on ``home`` (8 slots, 1 thread, 256 tokens of context per slot), with
    ``extra_env`` on top; its log goes to ``log_path`` (default: home/server.log)."""
    port = free_port()
    env = {
        **os.environ,
        "CORRAL_HOME": str(home),
        "CORRAL_PORT": str(port),
        "CORRAL_THREADS": "1",
        "CORRAL_SLOTS": str(SLOTS),
        "CORRAL_CONTEXT_LENGTH": "256",
        "CORRAL_DEMO_MODEL": "0",
        "CORRAL_MAX_UPLOAD": "1GiB",
        "CORRAL_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    log = (log_path or home / "server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


class PeakRss:
    """Samples a process's RSS in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run_batch(url: str, n: int, pid: int, workdir: Path) -> dict[str, Any]:
    source = workdir / "input.jsonl"
    with source.open("w") as f:
        for i in range(n):
            line = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": request_body(i),
            }
            f.write(json.dumps(line) + "\n")
    with httpx.Client(base_url=url + "/v1", timeout=None) as client:
        # Load the model first so both paths start warm.
        client.post("/chat/completions", json=request_body(-1)).raise_for_status()
        with PeakRss(pid) as rss:
            with source.open("rb") as f:
                up = client.post(
                    "/files", files={"file": ("in.jsonl", f)}, data={"purpose": "batch"}
                )
            up.raise_for_status()
            start = time.monotonic()
            batch = client.post(
                "/batches",
                json={
                    "input_file_id": up.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            ).json()
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.5)
                batch = client.get(f"/batches/{batch['id']}").json()
            wall = time.monotonic() - start
        tokens = 0
        with client.stream("GET", f"/files/{batch['output_file_id']}/content") as response:
            for raw in response.iter_lines():
                if raw:
                    tokens += json.loads(raw)["response"]["body"]["usage"]["completion_tokens"]
    counts = batch["request_counts"]
    return {
        "path": "batch API",
        "status": batch["status"],
        "requests": counts["completed"],
        "failed": counts["failed"],
        "wall_s": round(wall, 2),
        "requests_per_s": round(counts["completed"] / wall, 1),
        "tokens_per_s": round(tokens / wall, 1),
        "gateway_peak_rss_mb": round(rss.peak / 2**20, 1),
    }


async def run_interactive(url: str, n: int, clients: int = 8) -> dict[str, Any]:
    next_index = iter(range(n))
    tokens = 0
    done = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal tokens, done
        for i in next_index:
            reply = await client.post("/chat/completions", json=request_body(i))
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]
            done += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url + "/v1", timeout=None, limits=limits) as client:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.monotonic() - start
    return {
        "path": f"interactive API, {clients} concurrent clients",
        "requests": done,
        "wall_s": round(wall, 2),
        "requests_per_s": round(done / wall, 1),
        "tokens_per_s": round(tokens / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "120m"], default="tiny")
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    model = model_file(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        Registry(home).import_file(model, "bench")
        proc, url = start_server(home)
        try:
            batch = run_batch(url, args.requests, proc.pid, home)
            interactive = asyncio.run(run_interactive(url, args.requests))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    report = {
        "model": args.model,
        "model_file": model.name,
        "requests": args.requests,
        "new_tokens": NEW_TOKENS,
        "slots": SLOTS,
        "results": [batch, interactive],
        "batch_vs_interactive": round(batch["requests_per_s"] / interactive["requests_per_s"], 2),
    }
    out = ROOT / "bench" / "out" / f"batch-{args.model}-{args.requests}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
