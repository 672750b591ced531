"""Corral in front of vLLM against vLLM alone: the gateway's cost, in one run.

Both sides run the same vLLM (``--vllm-python``, its own venv) on the same model with
the same flags; Corral starts its copy through the ``vllm`` engine. Streamed chat
completions of ``--tokens`` new tokens (``ignore_eos``, so every request makes them
all) from 1, 8 and 32 concurrent clients; generated tokens/s and TTFT per side, and
Corral's throughput as a share of vLLM's (the target: overhead under 3%, on a GPU).

    python bench/vllm.py --vllm-python /opt/vllm/bin/python --model /models/Qwen2.5-0.5B-Instruct
    python bench/vllm.py --vllm-python /tmp/vllm-venv/bin/python --device cpu  # tiny, CPU

Without ``--model`` it serves the tests' tiny random Llama (CPU figures only say
what the hop costs when the engine is nearly free, the worst case for the ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.engines.vllm.descriptor import VllmParams, vllm_args  # noqa: E402
from corral.registry.store import Registry  # noqa: E402
from corral.scheduler.launch import free_port  # noqa: E402

CLIENTS = (1, 8, 32)


async def one(client: httpx.AsyncClient, url: str, model: str, tokens: int, i: int) -> float:
    """One streamed chat completion; its TTFT in seconds."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Request {i}: tell me a story."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    ttft = 0.0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and not ttft and '"content":"' in line.replace(" ", ""):
                ttft = time.perf_counter() - start
    return ttft


async def load(url: str, model: str, clients: int, requests: int, tokens: int) -> dict[str, float]:
    queue = list(range(requests))
    ttfts: list[float] = []
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while queue:
                ttfts.append(await one(client, url, model, tokens, queue.pop()))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {
        "tokens_per_s": requests * tokens / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "wall_s": wall,
    }


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}: not healthy in {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(url: str, model: str, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    asyncio.run(load(url, model, 1, 2, 8))  # warm: compilation, the first blocks
    out = {}
    for clients in CLIENTS:
        requests = max(args.requests, clients * 2)
        out[clients] = asyncio.run(load(url, model, clients, requests, args.tokens))
        print(url, clients, out[clients], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face model dir")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "vllm.json")
    args = parser.parse_args()
    if args.model is None:
        from tests.support.hf_models import vllm_llama

        args.model = vllm_llama()
    params = {"engine": "vllm", "device": args.device, "slots": args.slots, "context": 2048}
    if args.device == "cpu":
        params["cpu_kv_cache_gb"] = 2
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    results: dict[str, dict[int, dict[str, float]]] = {}

    with tempfile.TemporaryDirectory() as home:
        record = Registry(Path(home)).import_path(args.model, "bench", params=params)
        port = free_port()
        same = VllmParams(
            device=args.device, slots=args.slots, context_length=2048, cpu_kv_cache_gb=2
        )
        flags = vllm_args(record, same, "127.0.0.1", port)
        direct = subprocess.Popen(
            [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", *flags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, direct)
            results["vLLM"] = measure(url, record.name, args)
        finally:
            stop(direct)

        gateway_port = free_port()
        corral_env = {
            **env,
            "CORRAL_HOME": home,
            "CORRAL_PORT": str(gateway_port),
            "CORRAL_VLLM_PYTHON": args.vllm_python,
            "CORRAL_WORKER_START_TIMEOUT": "900",
            "CORRAL_DEMO_MODEL": "0",
            "CORRAL_LOG_LEVEL": "warning",
        }
        corral = subprocess.Popen([sys.executable, "-m", "corral", "serve"], env=corral_env)
        url = f"http://127.0.0.1:{gateway_port}"
        try:
            wait_healthy(url, corral, 60)
            results["Corral->vLLM"] = measure(url, "bench", args)
        finally:
            stop(corral)

    rows = ["| clients | vLLM tok/s | Corral->vLLM tok/s | ratio | TTFT p50 vLLM / Corral ms |"]
    rows.append("| ---: | ---: | ---: | ---: | ---: |")
    for clients in CLIENTS:
        v, c = results["vLLM"][clients], results["Corral->vLLM"][clients]
        rows.append(
            f"| {clients} | {v['tokens_per_s']:.0f} | {c['tokens_per_s']:.0f} | "
            f"{c['tokens_per_s'] / v['tokens_per_s']:.3f} | "
            f"{v['ttft_p50_ms']:.0f} / {c['ttft_p50_ms']:.0f} |"
        )
    report = {"device": args.device, "model": str(args.model), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
