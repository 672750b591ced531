"""Structured output: tokens/s with and without a JSON Schema, and what the mask costs.

On the bench model (``bench/serving.py``'s 134M f16 GGUF), greedy completions of up to
128 tokens from distinct prompts, at 1 and 8 clients, each system first free then held
to ``SCHEMA`` (a list of records: long enough that no reply ends early):

  (a) Corral (``json_schema`` extension; llguidance masks, 8 slots);
  (b) llama.cpp's C++ ``llama-server`` (``json_schema``; its GBNF grammar sampler),
      when ``LLAMA_SERVER`` names its binary;
  (c) ``python -m llama_cpp.server`` (``grammar``: llama-cpp-python's GBNF of the schema).

Tokens/s counts the completion tokens each reply's usage reports. Then Corral's engine
in-process: the mean time per constrained token spent on masks (computing what was not
hidden behind ``llama_decode``, and applying them), from the engine's counters.

    LLAMA_SERVER=$(../shared/tools/build-llama-server) python bench/structured.py
                                              # writes bench/out/structured.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import (  # noqa: E402
    NEW_TOKENS,
    build_models,
    llama_server_binary,
    make_prompts,
    start_corral,
    start_llama_cpp_server,
    start_llama_server,
    stop,
)
from corral.registry.store import Registry  # noqa: E402

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "records": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "name": {"type": "string", "maxLength": 12},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                    "score": {"type": "number"},
                },
                "required": ["id", "name", "tags", "score"],
            },
        }
    },
    "required": ["records"],
}


def constraint_body(system: str) -> dict[str, Any]:
    """The same schema in each system's own request field."""
    if system == "llama_cpp.server":
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        return {"grammar": json_schema_to_gbnf(json.dumps(SCHEMA))}
    return {"json_schema": SCHEMA}


async def run(url: str, prompts: list[str], clients: int, extra: dict[str, Any]) -> float:
    """Completion tokens per second over ``prompts`` at ``clients`` concurrent requests."""
    queue = list(prompts)
    tokens = 0
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            nonlocal tokens
            while queue:
                body = {
                    "model": "bench",
                    "prompt": queue.pop(0),
                    "max_tokens": NEW_TOKENS,
                    "temperature": 0,
                    **extra,
                }
                reply = await client.post(url + "/v1/completions", json=body)
                if reply.status_code != 200:
                    raise RuntimeError(f"{url}: {reply.status_code} {reply.text}")
                tokens += reply.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return tokens / (time.perf_counter() - start)


def measure(system: str, url: str, model: Path, requests: int) -> dict[str, float]:
    asyncio.run(run(url, ["warm up"], 1, {}))
    out: dict[str, float] = {}
    for clients in (1, 8):
        prompts = make_prompts(requests if clients == 8 else requests // 4, 10 + clients, model)
        for label, extra in (("free", {}), ("schema", constraint_body(system))):
            speed = asyncio.run(run(url, prompts, clients, extra))
            out[f"{label}@{clients}"] = round(speed, 1)
            print(f"{system} {label} at {clients} clients: {speed:.1f} tok/s", flush=True)
    return out


def mask_cost(model: Path, requests: int) -> dict[str, float]:
    """Corral's engine in-process, 8 constrained requests at a time."""
    from corral.engines import guidance
    from corral.engines.base import GenerationRequest, SamplingParams, collect
    from corral.engines.llamacpp.descriptor import LlamaCppParams
    from corral.engines.llamacpp.engine import LlamaCppEngine

    engine = LlamaCppEngine(model, LlamaCppParams(threads=1, slots=8, context_length=2048))
    grammar = guidance.json_schema_grammar(SCHEMA, param="bench")
    engine.check_grammar(grammar, param="bench")
    prompts = make_prompts(requests, 30, model)

    async def main() -> None:
        await asyncio.gather(
            *(
                collect(
                    engine,
                    GenerationRequest(
                        engine.tokenize(p, add_special=True, parse_special=True),
                        NEW_TOKENS,
                        SamplingParams(temperature=0.0),
                        grammar=grammar,
                    ),
                )
                for p in prompts
            )
        )

    try:
        asyncio.run(main())
        stats = engine.stats()
    finally:
        engine.close()
    tokens = max(stats["constrained_tokens"], 1)
    return {
        "constrained_tokens": stats["constrained_tokens"],
        "mask_wait_us_per_token": round(stats["mask_wait_ns"] / tokens / 1000, 1),
        "mask_apply_us_per_token": round(stats["mask_apply_ns"] / tokens / 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "structured.json")
    args = parser.parse_args()
    model = build_models()["f16"]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        Registry(Path(home)).import_file(model, "bench")
        proc, url = start_corral(Path(home), args.threads, slots=8)
        try:
            results["Corral"] = measure("Corral", url, model, args.requests)
        finally:
            stop(proc)
    binary = llama_server_binary()
    if binary is not None:
        proc, url = start_llama_server(binary, model, args.threads)
        try:
            results["llama-server"] = measure("llama-server", url, model, args.requests)
        finally:
            stop(proc)
    else:
        print("llama-server: skipped (set LLAMA_SERVER to its binary)", flush=True)
    proc, url = start_llama_cpp_server(model, args.threads)
    try:
        results["llama_cpp.server"] = measure("llama_cpp.server", url, model, args.requests)
    finally:
        stop(proc)
    results["Corral engine masks"] = mask_cost(model, args.requests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"schema": SCHEMA, "results": results}, indent=2))
    print("| system | free @1 | schema @1 | ratio @1 | free @8 | schema @8 | ratio @8 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for system, r in results.items():
        if "free@1" not in r:
            continue
        cells = []
        for clients in (1, 8):
            free, held = r[f"free@{clients}"], r[f"schema@{clients}"]
            cells += [f"{free:.1f}", f"{held:.1f}", f"{held / free:.2f}"]
        print(f"| {system} | " + " | ".join(cells) + " |")
    print(results["Corral engine masks"])


if __name__ == "__main__":
    main()
