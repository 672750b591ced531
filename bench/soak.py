"""Soak: one server under mixed traffic for a long time, watched for leaks and errors.

16 clients (``--clients``) for 20 minutes (``--minutes``) send, at random: chat
answers, streams, embeddings, streams they abandon after a few chunks (disconnects),
and now and then a small batch through the Batch API. Two synthetic models (a chat
model and an embedding model), so that both workers stay busy at once. Every 30 s
the gateway's and the workers' RSS are sampled; at the end it reports, per kind of
request, how many, errors and p50/p99 latency, and RSS growth from the first sample
after warm-up (2 minutes) to the last, which should stay under 10%.

    python bench/soak.py                       # 20 minutes, writes bench/out/soak.json
    python bench/soak.py --minutes 2 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import start_corral  # noqa: E402
from corral.registry.store import Registry  # noqa: E402
from corral.registry.synthetic import SyntheticSpec, write_model  # noqa: E402

KINDS = ("chat", "stream", "embed", "disconnect", "batch")
WEIGHTS = (0.35, 0.3, 0.2, 0.13, 0.02)
WARM_UP_SECONDS = 120.0
SAMPLE_EVERY = 30.0
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "tired",
    "otters",
    "watch",
]


def start(home: Path, slots: int) -> tuple[subprocess.Popen[bytes], str]:
    registry = Registry(home)
    registry.import_path(write_model(home / "chat.gguf", SyntheticSpec(seed=1)), "chat")
    spec = SyntheticSpec(seed=2, embedding=True, name="embed")
    registry.import_path(write_model(home / "embed.gguf", spec), "embed")
    registry.close()
    extra = {"CORRAL_CONTEXT_LENGTH": "512", "CORRAL_MAX_QUEUE": "1024"}
    return start_corral(home, threads=1, slots=slots, extra_env=extra)


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))


class Soak:
    def __init__(self, url: str, clients: int, seconds: float, seed: int) -> None:
        self.url = url
        self.clients = clients
        self.deadline = time.monotonic() + seconds
        self.rng = random.Random(seed)
        self.latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: dict[str, list[str]] = {k: [] for k in KINDS}

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as http:
            await asyncio.gather(*(self.client(http, i) for i in range(self.clients)))

    async def client(self, http: httpx.AsyncClient, n: int) -> None:
        rng = random.Random(self.rng.random())
        while time.monotonic() < self.deadline:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            started = time.perf_counter()
            try:
                await getattr(self, kind)(http, rng)
            except Exception as exc:  # every failure is counted, none stops the soak
                self.errors[kind].append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                self.latencies[kind].append(time.perf_counter() - started)

    async def chat(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": prompt(rng)}],
            "max_tokens": rng.randint(8, 64),
        }
        reply = await http.post("/v1/chat/completions", json=body)
        reply.raise_for_status()

    async def stream(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": prompt(rng)}],
            "max_tokens": rng.randint(8, 64),
            "stream": True,
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            reply.raise_for_status()
            last = ""
            async for line in reply.aiter_lines():
                last = line or last
            if last != "data: [DONE]":
                raise RuntimeError(f"stream ended with {last!r}")

    async def embed(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        inputs = [prompt(rng) for _ in range(rng.randint(1, 8))]
        reply = await http.post("/v1/embeddings", json={"model": "embed", "input": inputs})
        reply.raise_for_status()
        if len(reply.json()["data"]) != len(inputs):
            raise RuntimeError("wrong number of embeddings")

    async def disconnect(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": prompt(rng)}],
            "max_tokens": 200,
            "stream": True,
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            reply.raise_for_status()
            seen = 0
            async for _ in reply.aiter_lines():
                seen += 1
                if seen >= rng.randint(2, 6):
                    break  # the client leaves; the server must free the slot

    async def batch(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        lines = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "chat",
                    "messages": [{"role": "user", "content": prompt(rng)}],
                    "max_tokens": 16,
                },
            }
            for i in range(20)
        ]
        content = "\n".join(json.dumps(x) for x in lines).encode() + b"\n"
        stored = await http.post(
            "/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", content)}
        )
        stored.raise_for_status()
        batch = await http.post(
            "/v1/batches",
            json={
                "input_file_id": stored.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        batch.raise_for_status()
        while True:
            await asyncio.sleep(1)
            state = (await http.get(f"/v1/batches/{batch.json()['id']}")).json()
            if state["status"] in ("completed", "failed", "expired", "cancelled"):
                break
        counts = state["request_counts"]
        if state["status"] != "completed" or counts["completed"] != 20:
            raise RuntimeError(f"batch {state['status']}: {counts}")


def rss_sample(server: psutil.Process, url: str) -> dict[str, int]:
    """The gateway's RSS and each worker's, named by its model and pid (a worker
    replaced mid-run starts a series of its own)."""
    sample = {"gateway": server.memory_info().rss}
    for worker in httpx.get(url + "/health", timeout=10).json()["workers"]:
        try:
            rss = psutil.Process(worker["pid"]).memory_info().rss
        except (psutil.Error, TypeError):
            continue
        sample[f"worker {worker['model']} (pid {worker['pid']})"] = rss
    return sample


async def sampler(
    proc: psutil.Process, url: str, deadline: float, out: list[dict[str, Any]]
) -> None:
    started = time.monotonic()
    while time.monotonic() < deadline:
        sample = await asyncio.to_thread(rss_sample, proc, url)
        out.append({"t": round(time.monotonic() - started), **sample})
        await asyncio.sleep(SAMPLE_EVERY)
    sample = await asyncio.to_thread(rss_sample, proc, url)
    out.append({"t": round(time.monotonic() - started), **sample})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def growth(samples: list[dict[str, Any]], key: str) -> float | None:
    """RSS growth of ``key`` from the first sample after warm-up to the last."""
    warm = [s for s in samples if s["t"] >= WARM_UP_SECONDS and key in s]
    if len(warm) < 2:
        return None
    return (warm[-1][key] - warm[0][key]) / warm[0][key]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp), args.slots)
        try:
            soak = Soak(url, args.clients, args.minutes * 60, args.seed)
            samples: list[dict[str, Any]] = []
            watcher = asyncio.create_task(
                sampler(psutil.Process(proc.pid), url, soak.deadline, samples)
            )
            await soak.run()
            await watcher
            # Workers were sampled by pid; a worker replaced mid-run starts a new series.
            keys = sorted({k for s in samples for k in s if k != "t"})
            return {
                "minutes": args.minutes,
                "clients": args.clients,
                "kinds": {
                    kind: {
                        "ok": len(soak.latencies[kind]),
                        "errors": len(soak.errors[kind]),
                        "first_errors": soak.errors[kind][:3],
                        "p50_s": round(statistics.median(soak.latencies[kind]), 3)
                        if soak.latencies[kind]
                        else None,
                        "p99_s": round(percentile(soak.latencies[kind], 0.99), 3),
                    }
                    for kind in KINDS
                },
                "rss_growth_after_warm_up": {k: growth(samples, k) for k in keys},
                "rss_samples": samples,
            }
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak.json")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for kind, figures in report["kinds"].items():
        print(
            f"{kind:10} ok {figures['ok']:6}  errors {figures['errors']:4}  "
            f"p50 {figures['p50_s']}s  p99 {figures['p99_s']}s"
        )
    for key, value in report["rss_growth_after_warm_up"].items():
        first = next(s[key] for s in report["rss_samples"] if key in s)
        last = [s[key] for s in report["rss_samples"] if key in s][-1]
        shown = "n/a" if value is None else f"{value * 100:+.1f}%"
        print(
            f"RSS {key:40} {first / 2**20:7.1f} -> {last / 2**20:7.1f} MiB  ({shown} after warm-up)"
        )


if __name__ == "__main__":
    main()
