"""Long-lived serving: one server answers round after round, and every round is reported.

``bench/serving.py`` starts a fresh server for each measurement, so it cannot see a
server that slows down as it ages (issue 12: Corral's 8-client throughput fell from
122 to 80 tok/s over six runs on one worker, while llama-server held 132). Here each
system serves ``--rounds`` rounds back to back on the same process: each round is
``--requests`` fresh distinct ~64-token prompts (new every round) at ``--clients``
concurrent streams of 128 greedy tokens, the same requests for every system.

    LLAMA_SERVER=$(../shared/tools/build-llama-server) python bench/long_lived.py
    python bench/long_lived.py --quant q4_k_m --rounds 10   # writes bench/out/long_lived.json
    python bench/long_lived.py --workload shared-prefix      # one system prompt for all
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
    prefix = " ".join(rng.choice(WORDS) for _ in range(40))
    return [f"{prefix} | {i}: " + " ".join(rng.choice(WORDS) for _ in range(8)) for i in range(n)]


def serve_rounds(url: str, rounds: list[list[str]], clients: int, name: str) -> list[float]:
    """Tokens/s of each round, on the server at ``url``."""
    asyncio.run(run_clients(url, "bench", rounds[0][:1], 1))  # warm up
    speeds = []
    for n, prompts in enumerate(rounds, start=1):
        wall, ttfts = asyncio.run(run_clients(url, "bench", prompts, clients))
        speeds.append(round(len(ttfts) * NEW_TOKENS / wall, 1))
        p50 = statistics.median(ttfts) * 1000
        print(f"{name} round {n}: {speeds[-1]} tok/s, TTFT p50 {p50:.0f} ms", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quant", default="f16", choices=["f16", "q4_k_m"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--workload",
        default="distinct",
        choices=["distinct", "shared-prefix"],
        help="distinct ~64-token prompts, or one 40-word prefix shared by every request",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "long_lived.json")
    args = parser.parse_args()

    model = build_models()[args.quant]
    if args.workload == "shared-prefix":
        rounds = [shared_prefix_prompts(args.requests, 1000 + n) for n in range(args.rounds)]
    else:
        rounds = [make_prompts(args.requests, 1000 + n, model) for n in range(args.rounds)]
    speeds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as home:
        Registry(Path(home)).import_file(model, "bench")
        proc, url = start_corral(Path(home), args.threads, slots=args.clients)
        try:
            speeds["Corral"] = serve_rounds(url, rounds, args.clients, "Corral")
        finally:
            stop(proc)
    binary = llama_server_binary()
    if binary is None:
        print("llama-server: skipped (set LLAMA_SERVER to its binary)", flush=True)
    else:
        proc, url = start_llama_server(binary, model, args.threads, slots=args.clients)
        try:
            speeds["llama-server"] = serve_rounds(url, rounds, args.clients, "llama-server")
        finally:
            stop(proc)

    if RESENT:
        print(f"resent after an unanswered close: {len(RESENT)} requests ({set(RESENT)})")
    report = {"settings": vars(args) | {"out": str(args.out)}, "tokens_per_s": speeds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    names = list(speeds)
    print("| round | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"))
    print("| ---: |" + " ---: |" * (len(names) + (len(names) == 2)))
    for n in range(args.rounds):
        cells = [f"{speeds[name][n]:.1f}" for name in names]
        if len(names) == 2:
            cells.append(f"{speeds[names[0]][n] / speeds[names[1]][n]:.2f}x")
        print(f"| {n + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
