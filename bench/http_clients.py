"""The gateway -> worker hop: httpx vs aiohttp round trips against a real worker.

Why the gateway's proxy uses aiohttp. Starts `corral serve` on a tiny model, loads
it, then times sequential GET /health on the worker with each client.

    python bench/http_clients.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serving import CACHE, start_corral, stop
from corral.registry.store import Registry
from corral.registry.synthetic import SyntheticSpec, write_model

N = 1000


async def timed(request: object) -> float:
    start = time.perf_counter()
    await request  # type: ignore[misc]
    return time.perf_counter() - start


async def compare(worker: str) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient() as client:
        samples = [await timed(client.get(worker)) for _ in range(N)]
        out["httpx_p50_ms"] = statistics.median(samples[100:]) * 1000
    async with aiohttp.ClientSession() as session:

        async def get() -> None:
            async with session.get(worker) as response:
                await response.read()

        samples = [await timed(get()) for _ in range(N)]
        out["aiohttp_p50_ms"] = statistics.median(samples[100:]) * 1000
    return out


def main() -> None:
    tiny = CACHE / "overhead-tiny.gguf"
    if not tiny.exists():
        write_model(tiny, SyntheticSpec(name="overhead-tiny", n_embd=192, n_layer=4, n_ff=512))
    with tempfile.TemporaryDirectory() as home:
        Registry(Path(home)).import_file(tiny, "tiny")
        proc, url = start_corral(Path(home), threads=1, slots=4)
        try:
            httpx.post(
                url + "/v1/completions",
                json={"model": "tiny", "prompt": "hi", "max_tokens": 1},
                timeout=60,
            )
            worker = httpx.get(url + "/health").json()["workers"][0]["url"] + "/health"
            print(asyncio.run(compare(worker)))
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
