"""Swap benchmark: cold-start cost and alternating models under memory pressure.

1. Cold start: time from a request for a model that is not loaded to its first
   token, through Corral, against the worker's own load time (spawn to /health,
   the same command) plus a warm first token, measured in the same run. Also a
   *swap*: the memory budget fits one model, so another must be evicted first.
   Target (issue 3): cold TTFT <= 1.2 x (load + warm TTFT) + 100 ms.
2. Alternation: two models that do not fit together, 8 requests for each
   submitted at once in alternating order, with and without grouping by model:
   total time and number of loads.

    python bench/swap.py                     # writes bench/out/swap.json
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serving import ROOT, build_models, start_corral, stop
from corral.registry.store import Registry
from corral.scheduler.launch import free_port
from corral.scheduler.memory import WorkerParams, estimate

SLOTS, CONTEXT = 2, 2048
REPEATS = 5


def direct_load_seconds(model: Path) -> float:
    """Spawn the worker exactly as Corral does and time it until /health answers."""
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral.worker",
            "--model-path",
            str(model),
            "--model-name",
            "x",
            "--port",
            str(port),
            "--threads",
            "1",
            "--slots",
            str(SLOTS),
            "--context-length",
            str(CONTEXT),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/health"
    while True:  # poll every 10 ms: a coarse poll would flatter Corral's figure
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError("worker exited while loading") from None
            time.sleep(0.01)
    elapsed = time.perf_counter() - start
    stop(proc)
    return elapsed


def first_token_seconds(url: str, model: str) -> float:
    body = {
        "model": model,
        "prompt": "Hello there",
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                return time.perf_counter() - start
    raise RuntimeError("no token")


def unload(url: str, model: str) -> None:
    httpx.post(f"{url}/admin/models/{model}/unload", timeout=60).raise_for_status()


def cold_start(model: Path) -> dict[str, Any]:
    loads = [direct_load_seconds(model) for _ in range(REPEATS)]
    with tempfile.TemporaryDirectory() as home:
        store = Registry(Path(home))
        store.import_file(model, "a")
        record = store.import_file(model, "b")
        need = estimate(record.info, record.size, WorkerParams(1, SLOTS, CONTEXT, 512)).total
        env = {"CORRAL_MEMORY_BUDGET": str(int(1.5 * need))}  # fits one model, not two
        proc, url = start_corral(Path(home), 1, SLOTS, extra_env=env)
        try:
            first_token_seconds(url, "a")
            warm = [first_token_seconds(url, "a") for _ in range(REPEATS)]
            cold = []
            for _ in range(REPEATS):
                unload(url, "a")
                cold.append(first_token_seconds(url, "a"))
            swaps = []
            for i in range(REPEATS * 2):  # a and b take turns: each request evicts the other
                swaps.append(first_token_seconds(url, "b" if i % 2 == 0 else "a"))
        finally:
            stop(proc)
    load, warm_ttft = statistics.median(loads), statistics.median(warm)
    baseline = load + warm_ttft
    return {
        "model": model.name,
        "direct_load_s": round(load, 3),
        "warm_ttft_s": round(warm_ttft, 3),
        "cold_ttft_s": round(statistics.median(cold), 3),
        "swap_ttft_s": round(statistics.median(swaps), 3),
        "target_s": round(1.2 * baseline + 0.1, 3),
        "cold_over_baseline": round(statistics.median(cold) / baseline, 3),
        "swap_over_baseline": round(statistics.median(swaps) / baseline, 3),
    }


async def alternating(url: str, n_each: int) -> float:
    async def one(model: str) -> None:
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
        async with httpx.AsyncClient(timeout=600) as client:
            (await client.post(url + "/v1/completions", json=body)).raise_for_status()

    start = time.perf_counter()
    tasks = []
    for i in range(2 * n_each):
        tasks.append(asyncio.create_task(one("a" if i % 2 == 0 else "b")))
        await asyncio.sleep(0.01)  # arrive in a known, alternating order
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


def alternation(model: Path, group: bool, n_each: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        store = Registry(Path(home))
        store.import_file(model, "a")
        record = store.import_file(model, "b")
        need = estimate(record.info, record.size, WorkerParams(1, 1, CONTEXT, 512)).total
        env = {
            "CORRAL_MEMORY_BUDGET": str(int(1.5 * need)),
            "CORRAL_GROUP_BY_MODEL": "1" if group else "0",
        }
        proc, url = start_corral(Path(home), 1, 1, extra_env=env, log=Path(home) / "log")
        try:
            wall = asyncio.run(alternating(url, n_each))
        finally:
            stop(proc)
        loads = (Path(home) / "log").read_text().count("corral.scheduler: loading")
    return {"grouping": group, "requests": 2 * n_each, "wall_s": round(wall, 2), "loads": loads}


def main() -> None:
    models = build_models()
    q4 = models["q4_k_m"]
    report: dict[str, Any] = {"cpus": os.cpu_count(), "slots": SLOTS, "context": CONTEXT}
    report["cold_start"] = cold_start(q4)
    print(report["cold_start"], flush=True)
    report["alternation"] = [alternation(q4, group) for group in (False, True)]
    print(report["alternation"], flush=True)
    out = ROOT / "bench" / "out" / "swap.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
