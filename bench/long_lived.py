"""Long-lived serving: one server answers round after round, and every round is reported.

``bench/serving.py`` starts a fresh server for each measurement, so it cannot see a
server that slows down as it ages (issue 12: Corral's 8-client throughput fell from
122 to 80 tok/s over six runs on one worker, while llama-server held 132), nor what
prompt caching across requests is worth. Here each system serves ``--rounds`` rounds
back to back on the same process, every round ``--requests`` requests at
``--clients`` concurrent clients, 128 greedy tokens each, the same requests for every
system. Workloads:

- ``distinct``: fresh ~64-token prompts, new every round;
- ``shared-prefix``: one 40-word system prompt, then 8 words of each request's own;
- ``multi-turn``: ``--requests`` conversations; each round every conversation resends
  its whole history (a shared 40-word system prompt, its earlier turns and the
  replies it got, cut to their first 100 characters) plus a new 8-word turn, as a
  chat client does.

    LLAMA_SERVER=$(../shared/tools/build-llama-server) python bench/long_lived.py
    python bench/long_lived.py --quant q4_k_m --rounds 10   # writes bench/out/long_lived.json
    python bench/long_lived.py --workload multi-turn --no-stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import (  # noqa: E402
    NEW_TOKENS,
    RESENT,
    WORDS,
    build_models,
    llama_server_binary,
    make_prompts,
    run_clients,
    start_corral,
    start_llama_server,
    stop,
)
from corral.registry.store import Registry  # noqa: E402


def shared_prefix_prompts(n: int, seed: int) -> list[str]:
    """Issue 12's chat-like workload: one 40-word prefix (a system prompt) shared by
    every request of the run, then 8 words of each request's own."""
    rng = random.Random(seed)
    prefix = words(rng, 40)
    return [f"{prefix} | {i}: {words(rng, 8)}" for i in range(n)]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# The bench model's replies do not tokenize back into the tokens it generated (its
# synthetic vocabulary has few merges: 128 tokens come back as ~750), so a history
# keeps only the start of each reply, and grows by ~80 tokens a turn instead.
REPLY_CHARS = 100


class Workload:
    """The prompts of each round; a round may depend on the replies to the last one."""

    def __init__(self, kind: str, requests: int, model: Path) -> None:
        self.kind, self.requests, self.model = kind, requests, model

    def first(self) -> list[str]:
        if self.kind == "multi-turn":
            rng = random.Random(2000)
            system = words(rng, 40)
            return [f"{system}\nuser {i}: {words(rng, 8)}\nreply:" for i in range(self.requests)]
        return self.fresh(0)

    def fresh(self, n: int) -> list[str]:
        if self.kind == "shared-prefix":
            return shared_prefix_prompts(self.requests, 1000 + n)
        return make_prompts(self.requests, 1000 + n, self.model)

    def next(self, n: int, prompts: list[str], replies: list[str]) -> list[str]:
        if self.kind != "multi-turn":
            return self.fresh(n)
        rng = random.Random(3000 + n)
        return [
            f"{prompt}{reply[:REPLY_CHARS]}\nuser: {words(rng, 8)}\nreply:"
            for prompt, reply in zip(prompts, replies, strict=True)
        ]


def serve_rounds(
    url: str, workload: Workload, rounds: int, clients: int, stream: bool, name: str
) -> list[dict[str, float]]:
    """Tokens/s and TTFT p50 of each round, on the server at ``url``."""
    asyncio.run(run_clients(url, "bench", ["warm up"], 1))
    results = []
    prompts = workload.first()
    for n in range(1, rounds + 1):
        done = asyncio.run(run_clients(url, "bench", prompts, clients, stream))
        speed = round(len(done.ttfts) * NEW_TOKENS / done.wall, 1)
        p50 = round(statistics.median(done.ttfts) * 1000, 1)
        results.append({"tokens_per_s": speed, "ttft_p50_ms": p50})
        print(f"{name} round {n}: {speed} tok/s, TTFT p50 {p50:.0f} ms", flush=True)
        prompts = workload.next(n, prompts, done.texts)
    return results


def worker_stats(url: str) -> dict[str, object]:
    """The engine's counters (prompt tokens cached and evaluated, prompt cache) from its
    worker's /health, found through the gateway's /admin/ps."""
    models = httpx.get(url + "/admin/ps", timeout=30).json()["models"]
    worker = next(m for m in models if m.get("url"))
    health = httpx.get(worker["url"] + "/health", timeout=30).json()
    return {k: v for k, v in health.items() if k.startswith(("prompt", "slots", "decode"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quant", default="f16", choices=["f16", "q4_k_m"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument(
        "--workload", default="distinct", choices=["distinct", "shared-prefix", "multi-turn"]
    )
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "long_lived.json")
    args = parser.parse_args()

    model = build_models()[args.quant]
    workload = Workload(args.workload, args.requests, model)
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as home:
        Registry(Path(home)).import_file(model, "bench")
        proc, url = start_corral(Path(home), args.threads, slots=args.slots)
        try:
            runs["Corral"] = serve_rounds(
                url, workload, args.rounds, args.clients, args.stream, "Corral"
            )
            engine_stats = worker_stats(url)
            print("Corral's engine:", engine_stats, flush=True)
        finally:
            stop(proc)
    binary = llama_server_binary()
    if binary is None:
        print("llama-server: skipped (set LLAMA_SERVER to its binary)", flush=True)
    else:
        proc, url = start_llama_server(binary, model, args.threads, slots=args.slots)
        try:
            runs["llama-server"] = serve_rounds(
                url, workload, args.rounds, args.clients, args.stream, "llama-server"
            )
        finally:
            stop(proc)

    if RESENT:
        print(f"resent after an unanswered close: {len(RESENT)} requests ({set(RESENT)})")
    report = {
        "settings": vars(args) | {"out": str(args.out)},
        "rounds": runs,
        "corral_engine": engine_stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(runs))


def markdown(runs: dict[str, list[dict[str, float]]]) -> str:
    """Tokens/s per round; with two systems, the ratio of both figures."""
    names = list(runs)
    head = " | ".join(f"{name} tok/s | {name} TTFT p50 ms" for name in names)
    pair = len(names) == 2
    rows = [
        f"| round | {head} |" + (" tok/s ratio | TTFT ratio |" if pair else ""),
        "| ---: |" + " ---: | ---: |" * (len(names) + pair),
    ]
    for n in range(len(runs[names[0]])):
        cells = []
        for name in names:
            cells += [f"{runs[name][n]['tokens_per_s']:.1f}", f"{runs[name][n]['ttft_p50_ms']:.0f}"]
        if pair:
            a, b = runs[names[0]][n], runs[names[1]][n]
            cells.append(f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x")
            cells.append(f"{a['ttft_p50_ms'] / max(b['ttft_p50_ms'], 0.1):.2f}x")
        rows.append(f"| {n + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
