"""Serving benchmark: Corral vs llama-server, llama_cpp.server and llama_cpp.Llama, in one run.

On a ~120M-parameter Llama GGUF made offline (f16 and Q4_K_M), greedy decoding of
128 new tokens from distinct ~64-token prompts, with 1 and 8 concurrent clients:
aggregate generated tokens/s and time to first token (TTFT) for

  (a) Corral (`corral serve`, one worker, 8 slots);
  (b) llama.cpp's C++ `llama-server` (8 parallel slots), the peer to beat;
  (b') Corral in front of that same llama-server (the command engine: Corral starts
       it, routes to it and translates its answers), to price the gateway's hop;
  (c) `python -m llama_cpp.server` on the same file;
  (d) `llama_cpp.Llama` in-process (one sequence at a time by construction).

All use the same llama.cpp commit, the same thread count and context per request.
Then the gateway's own cost: p50 latency of tiny non-streamed requests through the
gateway versus straight to the worker.

    pip install -e '.[bench]'
    LLAMA_SERVER=$(../shared/tools/build-llama-server) python bench/serving.py
                                              # writes bench/out/serving.json
(without ``LLAMA_SERVER``, llama.cpp's C++ server is skipped, and says so).
``--systems Corral,llama-server,Corral->llama-server`` runs only those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.registry.store import Registry  # noqa: E402
from corral.registry.synthetic import SyntheticSpec, parameter_count, write_model  # noqa: E402
from corral.scheduler.launch import free_port  # noqa: E402

CACHE = Path(os.environ.get("CORRAL_BENCH_CACHE", Path.home() / ".cache" / "corral-bench"))
SPEC = SyntheticSpec(
    name="bench-120m",
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_head_kv=12,
    n_ff=2048,
    n_vocab=32000,
    context_length=2048,
    n_merges=300,
    seed=7,
    can_end=False,
)
NEW_TOKENS = 128
SYSTEMS = (
    "Corral",
    "llama-server",
    "Corral->llama-server",
    "llama_cpp.server",
    "llama_cpp.Llama",
    "overhead",
)
PROMPT_TOKENS = 64
CONTEXT = 2048
WORDS = [
    "model",
    "server",
    "memory",
    "context",
    "token",
    "stream",
    "batch",
    "queue",
    "answer",
    "question",
    "story",
    "summary",
    "engine",
    "worker",
    "request",
    "client",
    "slot",
    "cache",
    "prompt",
    "reply",
    "weight",
    "layer",
    "vector",
    "machine",
]


@dataclass
class RunResult:
    system: str
    quant: str
    clients: int
    requests: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_mean_ms: float


# --- models -----------------------------------------------------------------------


def build_models() -> dict[str, Path]:
    """The f16 model and its Q4_K_M quantization (llama.cpp's own quantizer)."""
    import llama_cpp

    CACHE.mkdir(parents=True, exist_ok=True)
    f16 = CACHE / f"{SPEC.name}-f16.gguf"
    if not f16.exists():
        write_model(f16, SPEC)
    q4 = CACHE / f"{SPEC.name}-q4_k_m.gguf"
    if not q4.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.nthread = 2
        tmp = q4.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError("quantization failed")
        tmp.replace(q4)
    return {"f16": f16, "q4_k_m": q4}


def make_prompts(n: int, seed: int, model: Path) -> list[str]:
    """Distinct prompts of 64 tokens by the model's own tokenizer (no shared prefixes)."""
    import random

    import llama_cpp

    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = f"{rng.random():.6f} request {i}:"
        while len(vocab.tokenize(text.encode(), add_bos=True, special=True)) < PROMPT_TOKENS:
            text += " " + rng.choice(WORDS)
        out.append(text)
    vocab.close()
    return out


# --- clients ----------------------------------------------------------------------


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, stream: bool = True
) -> tuple[float, float, str, str]:
    """One completion; (TTFT, total seconds, finish reason, text). Not streamed, the
    TTFT is the whole reply's time: nothing reaches the client before it."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "stream": stream,
    }
    for attempt in (1, 2):
        try:
            if stream:
                return await _stream_completion(client, url, body)
            return await _whole_completion(client, url, body)
        except httpx.RemoteProtocolError:
            # llama-server now and then closes a connection before answering (twice
            # in the runs of 2026-12-01); such a request never ran: send it again.
            if attempt == 2:
                raise
            RESENT.append(url)
    raise AssertionError("unreachable")


RESENT: list[str] = []  # requests sent again after a connection closed unanswered


async def _stream_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, object]
) -> tuple[float, float, str, str]:
    start = time.perf_counter()
    ttft = None
    finish = ""
    text: list[str] = []
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    text.append(choice["text"])
                    if ttft is None:
                        ttft = time.perf_counter() - start
                finish = choice.get("finish_reason") or finish
    return (ttft or 0.0), time.perf_counter() - start, finish, "".join(text)


async def _whole_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, object]
) -> tuple[float, float, str, str]:
    start = time.perf_counter()
    response = await client.post(url + "/v1/completions", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text!r}")
    choice = response.json()["choices"][0]
    total = time.perf_counter() - start
    return total, total, choice.get("finish_reason") or "", choice.get("text") or ""


@dataclass
class Round:
    wall: float  # seconds for all the prompts
    ttfts: list[float]  # in the order the requests finished
    texts: list[str]  # completions, in the order of the prompts


async def run_clients(
    url: str, model: str, prompts: list[str], clients: int, stream: bool = True
) -> Round:
    """``clients`` concurrent requests working through ``prompts``."""
    queue = list(enumerate(prompts))
    ttfts: list[float] = []
    texts = [""] * len(prompts)
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def worker() -> None:
            while queue:
                index, prompt = queue.pop(0)
                ttft, _, finish, text = await one_request(client, url, model, prompt, stream)
                if finish != "length":
                    raise RuntimeError(f"{url} stopped early ({finish!r}): not {NEW_TOKENS} tokens")
                ttfts.append(ttft)
                texts[index] = text

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return Round(time.perf_counter() - start, ttfts, texts)


def summarize(system: str, quant: str, clients: int, wall: float, ttfts: list[float]) -> RunResult:
    tokens = len(ttfts) * NEW_TOKENS
    return RunResult(
        system=system,
        quant=quant,
        clients=clients,
        requests=len(ttfts),
        tokens=tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 2),
        ttft_p50_ms=round(statistics.median(ttfts) * 1000, 1),
        ttft_mean_ms=round(statistics.mean(ttfts) * 1000, 1),
    )


# --- systems under test -------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start_corral(
    home: Path,
    threads: int,
    slots: int,
    extra_env: dict[str, str] | None = None,
    log: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`corral serve` on a free port; with ``log``, its INFO log goes to that file."""
    port = free_port()
    env = {
        **os.environ,
        "CORRAL_HOME": str(home),
        "CORRAL_PORT": str(port),
        "CORRAL_THREADS": str(threads),
        "CORRAL_SLOTS": str(slots),
        "CORRAL_CONTEXT_LENGTH": str(CONTEXT),
        "CORRAL_DEMO_MODEL": "0",
        "CORRAL_LOG_LEVEL": "info" if log else "warning",
        **(extra_env or {}),
    }
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc)
    return proc, url


def start_llama_cpp_server(model: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            str(CONTEXT),
            "--interrupt_requests",
            "False",
            "--flash_attn",
            "True",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/models", proc)
    return proc, url


def llama_server_binary() -> Path | None:
    """llama.cpp's C++ ``llama-server``, the peer to beat, from ``LLAMA_SERVER``
    (``../shared/tools/build-llama-server`` builds it from the pinned sdist's source)."""
    path = os.environ.get("LLAMA_SERVER")
    return Path(path) if path and Path(path).is_file() else None


def llama_server_argv(
    binary: Path, model: str, host: str, port: str, threads: str, slots: str, ctx: str
) -> list[str]:
    """``llama-server`` with the settings Corral runs: same threads, ``slots`` parallel
    sequences sharing ``ctx`` tokens, flash attention auto. The same flags run it
    alone and under Corral's command engine (there with macros for the values)."""
    return [
        str(binary),
        *("--model", model, "--host", host, "--port", port),
        *("--threads", threads, "--threads-batch", threads),
        *("--parallel", slots, "--ctx-size", ctx),
        *("--flash-attn", "auto", "--no-webui"),
    ]


def start_llama_server(
    binary: Path, model: Path, threads: int, slots: int = 8
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = ROOT / "bench" / "out" / "llama-server.log"  # its own words, if it fails
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = llama_server_argv(
        binary, str(model), "127.0.0.1", str(port), str(threads), str(slots), str(CONTEXT * slots)
    )
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_direct(model: Path, quant: str, prompts: list[str], threads: int) -> RunResult:
    import llama_cpp

    llm = llama_cpp.Llama(
        str(model),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )
    llm.create_completion("warm up", max_tokens=4, temperature=0)
    ttfts = []
    start = time.perf_counter()
    for prompt in prompts:
        t0 = time.perf_counter()
        first = None
        reason = None
        for chunk in llm.create_completion(
            prompt, max_tokens=NEW_TOKENS, temperature=0, stream=True
        ):
            if chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - t0
            reason = chunk["choices"][0]["finish_reason"]
        if reason != "length":
            raise RuntimeError("llama_cpp.Llama stopped early")
        ttfts.append(first or 0.0)
    wall = time.perf_counter() - start
    llm.close()
    return summarize("llama_cpp.Llama (in-process)", quant, 1, wall, ttfts)


async def gateway_overhead(url: str, model: str, n: int) -> dict[str, float]:
    """p50 of tiny non-streamed requests via the gateway vs straight to the worker."""
    body = {"model": model, "prompt": "hi", "max_tokens": 1, "temperature": 0}
    async with httpx.AsyncClient(timeout=60) as client:
        (await client.post(url + "/v1/completions", json=body)).raise_for_status()  # load
        health = (await client.get(url + "/health")).json()
    worker = next(w for w in health["workers"] if w["model"] == model)
    via_gateway: list[float] = []
    direct: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(20):  # warm both paths
            await client.post(url + "/v1/completions", json=body)
            await client.post(worker["url"] + "/v1/completions", json=body)
        for _ in range(n):
            for target, samples in ((url, via_gateway), (worker["url"], direct)):
                t0 = time.perf_counter()
                r = await client.post(target + "/v1/completions", json=body)
                samples.append(time.perf_counter() - t0)
                r.raise_for_status()
    g, d = statistics.median(via_gateway) * 1000, statistics.median(direct) * 1000
    return {
        "gateway_p50_ms": round(g, 3),
        "worker_p50_ms": round(d, 3),
        "overhead_p50_ms": round(g - d, 3),
        "samples": n,
    }


def measure_server(
    system: str, quant: str, url: str, warm: list[str], single: list[str], multi: list[str]
) -> list[RunResult]:
    """Warm the server up, then 1 client through ``single`` and 8 through ``multi``."""
    asyncio.run(run_clients(url, "bench", warm, 1))
    results = []
    for clients, prompts in ((1, single), (8, multi)):
        done = asyncio.run(run_clients(url, "bench", prompts, clients))
        results.append(summarize(system, quant, clients, done.wall, done.ttfts))
        print(results[-1], flush=True)
    return results


def measure_gateway_overhead(threads: int, samples: int) -> dict[str, float]:
    """On a ~2M-parameter model, so the worker's compute does not drown the difference."""
    tiny = CACHE / "overhead-tiny.gguf"
    if not tiny.exists():
        write_model(tiny, SyntheticSpec(name="overhead-tiny", n_embd=192, n_layer=4, n_ff=512))
    with tempfile.TemporaryDirectory() as home:
        Registry(Path(home)).import_file(tiny, "tiny")
        proc, url = start_corral(Path(home), threads, slots=4)
        try:
            result = asyncio.run(gateway_overhead(url, "tiny:latest", samples))
        finally:
            stop(proc)
    result["model"] = "overhead-tiny (2M parameters)"  # type: ignore[assignment]
    return result


# --- main ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quants", default="f16,q4_k_m")
    parser.add_argument("--single-requests", type=int, default=4)
    parser.add_argument("--multi-requests", type=int, default=16)
    parser.add_argument("--overhead-samples", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "serving.json")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, of: {', '.join(SYSTEMS)}",
    )
    args = parser.parse_args()
    systems = set(args.systems.split(","))
    if unknown := systems - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")

    models = build_models()
    results: list[RunResult] = []
    for quant in args.quants.split(","):
        path = models[quant]
        single = make_prompts(args.single_requests, 1, path)
        multi = make_prompts(args.multi_requests, 2, path)
        warm = make_prompts(1, 99, path)
        print(f"== {quant}: {path.name} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        if "Corral" in systems:
            with tempfile.TemporaryDirectory() as home:
                Registry(Path(home)).import_file(path, "bench")
                proc, url = start_corral(Path(home), args.threads, slots=8)
                try:
                    results += measure_server("Corral", quant, url, warm, single, multi)
                finally:
                    stop(proc)
        binary = llama_server_binary()
        if binary is None:
            print("llama-server: skipped (set LLAMA_SERVER to its binary)", flush=True)
        if binary is not None and "llama-server" in systems:
            proc, url = start_llama_server(binary, path, args.threads)
            try:
                results += measure_server("llama-server", quant, url, warm, single, multi)
            finally:
                stop(proc)
        if binary is not None and "Corral->llama-server" in systems:
            with tempfile.TemporaryDirectory() as home:
                command = llama_server_argv(
                    binary, *("${MODEL_PATH}", "${HOST}", "${PORT}", "${THREADS}", "${SLOTS}"),
                    "${CONTEXT_TOTAL}",
                )  # fmt: skip
                params = {"engine": "command", "command": shlex.join(command)}
                Registry(Path(home)).import_path(path, "bench", params=params)
                proc, url = start_corral(Path(home), args.threads, slots=8)
                try:
                    results += measure_server(
                        "Corral->llama-server", quant, url, warm, single, multi
                    )
                finally:
                    stop(proc)
        if "llama_cpp.server" in systems:
            proc, url = start_llama_cpp_server(path, args.threads)
            try:
                results += measure_server("llama_cpp.server", quant, url, warm, single, multi)
            finally:
                stop(proc)
        if "llama_cpp.Llama" in systems:
            results.append(run_direct(path, quant, single, args.threads))
            print(results[-1], flush=True)
    overhead = (
        measure_gateway_overhead(args.threads, args.overhead_samples)
        if "overhead" in systems
        else {}
    )
    print(overhead, flush=True)

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": sys.platform,
            "python": sys.version.split()[0],
        },
        "model": {"spec": asdict(SPEC), "parameters": parameter_count(SPEC)},
        "settings": {
            "threads": args.threads,
            "new_tokens": NEW_TOKENS,
            "prompt_tokens_approx": PROMPT_TOKENS,
            "context": CONTEXT,
        },
        "results": [asdict(r) for r in results],
        "gateway_overhead": overhead,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:  # type: ignore[type-arg]
    rows = [
        "| system | quant | clients | requests | tokens/s | TTFT p50 ms | TTFT mean ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        rows.append(
            f"| {r['system']} | {r['quant']} | {r['clients']} | {r['requests']} | "
            f"{r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_mean_ms']:.0f} |"
        )
    by = {(r["system"], r["quant"], r["clients"]): r["tokens_per_s"] for r in report["results"]}
    rows.append("")
    for quant in sorted({r["quant"] for r in report["results"]}):
        c8, c1 = by.get(("Corral", quant, 8)), by.get(("Corral", quant, 1))
        s8 = by.get(("llama_cpp.server", quant, 8))
        l8, l1 = by.get(("llama-server", quant, 8)), by.get(("llama-server", quant, 1))
        if c8 and c1 and l8 and l1:
            rows.append(
                f"- {quant}: Corral / llama-server = {c8 / l8:.2f}x at 8 clients, "
                f"{c1 / l1:.2f}x at 1 client"
            )
        proxied = "Corral->llama-server"
        p8, p1 = by.get((proxied, quant, 8)), by.get((proxied, quant, 1))
        if p8 and p1 and l8 and l1:
            rows.append(
                f"- {quant}: Corral->llama-server / llama-server = {p8 / l8:.3f}x at 8 "
                f"clients, {p1 / l1:.3f}x at 1 client (the gateway's hop)"
            )
        if c8 and c1 and s8:
            rows.append(
                f"- {quant}: Corral 8-client / llama_cpp.server 8-client = {c8 / s8:.2f}x; "
                f"Corral 8-client / Corral 1-client = {c8 / c1:.2f}x"
            )
    o = report["gateway_overhead"]
    if o:
        rows.append(
            f"- gateway overhead p50: {o['overhead_p50_ms']:.2f} ms "
            f"(gateway {o['gateway_p50_ms']:.2f} ms vs worker {o['worker_p50_ms']:.2f} ms, "
            f"{o['samples']} samples)"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
