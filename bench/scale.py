"""One gateway against two on one PostgreSQL database, in one run: batch and
interactive throughput on loopback.

    python bench/scale.py                      # 10,000 batch requests, tiny model
    python bench/scale.py --requests 20000

Three set-ups, each fresh, on the tiny model of bench/batch.py (16 new tokens per
request, 8 slots and 1 llama.cpp thread per worker):

1. one gateway on SQLite (the default install);
2. one gateway on PostgreSQL (what the database costs);
3. two gateways on PostgreSQL sharing CORRAL_HOME: the batch is split between them
   by chunks, and the interactive clients alternate between them. Each gateway
   starts its own worker for the model.

For each: a batch of N requests (create to completed), then N requests from 8
concurrent clients. A PostgreSQL server is started for the run (Debian's binaries,
a Unix socket; tests/support/postgres.py). Results go to bench/out/scale-<n>.json.
Workers placed by Ray are not measured yet (Corral has no Ray launcher yet).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from batch import NEW_TOKENS, SLOTS, model_file, request_body, start_server  # noqa: E402

from corral.registry.store import Registry  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

CLIENTS = 8


def start_gateway(home: Path, name: str, database_url: str | None) -> tuple[Any, str]:
    """bench/batch.py's server, named for its leases, on the database when given."""
    env = {"CORRAL_GATEWAY_ID": name}
    if database_url:
        env["CORRAL_DATABASE_URL"] = database_url
    return start_server(home, env, home.parent / f"{name}.log")


def run_batch(urls: list[str], n: int, workdir: Path) -> dict[str, Any]:
    source = workdir / "input.jsonl"
    with source.open("w") as f:
        for i in range(n):
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": request_body(i)}) + "\n")
    for url in urls:  # every gateway's worker loaded: all start warm
        httpx.post(url + "/v1/chat/completions", json=request_body(-1), timeout=None)
    with httpx.Client(base_url=urls[0] + "/v1", timeout=None) as client:
        with source.open("rb") as f:
            up = client.post("/files", files={"file": ("in.jsonl", f)}, data={"purpose": "batch"})
        up.raise_for_status()
        start = time.monotonic()
        body = {
            "input_file_id": up.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        batch = client.post("/batches", json=body).json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
            batch = client.get(f"/batches/{batch['id']}").json()
        wall = time.monotonic() - start
        ids = set()
        with client.stream("GET", f"/files/{batch['output_file_id']}/content") as response:
            for raw in response.iter_lines():
                if raw:
                    ids.add(json.loads(raw)["custom_id"])
    counts = batch["request_counts"]
    return {
        "status": batch["status"],
        "requests": counts["completed"],
        "distinct_results": len(ids),
        "wall_s": round(wall, 2),
        "requests_per_s": round(counts["completed"] / wall, 1),
    }


async def run_interactive(urls: list[str], n: int) -> dict[str, Any]:
    """8 clients; client k talks to gateway k mod len(urls)."""
    next_index = iter(range(n))
    done = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal done
        for i in next_index:
            reply = await client.post("/chat/completions", json=request_body(i))
            reply.raise_for_status()
            done += 1

    clients = [
        httpx.AsyncClient(base_url=url + "/v1", timeout=None)
        for url in itertools.islice(itertools.cycle(urls), CLIENTS)
    ]
    start = time.monotonic()
    await asyncio.gather(*(client_loop(c) for c in clients))
    wall = time.monotonic() - start
    for c in clients:
        await c.aclose()
    return {"requests": done, "wall_s": round(wall, 2), "requests_per_s": round(done / wall, 1)}


def setup(
    label: str, gateways: int, database_url: str | None, n: int, model: Path
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        registry = Registry(home, database_url)
        registry.import_file(model, "bench")
        registry.close()
        procs = [start_gateway(home, f"gw{i}", database_url) for i in range(gateways)]
        urls = [url for _, url in procs]
        try:
            batch = run_batch(urls, n, Path(tmp))
            interactive = asyncio.run(run_interactive(urls, n))
        finally:
            for proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in procs:
                proc.wait(60)
    row = {"setup": label, "gateways": gateways, "batch": batch, "interactive": interactive}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    model = model_file("tiny")
    postgres = PostgresServer().start()
    try:
        rows = [
            setup("1 gateway, SQLite", 1, None, args.requests, model),
            setup(
                "1 gateway, PostgreSQL", 1, postgres.create_database("one"), args.requests, model
            ),
            setup(
                "2 gateways, PostgreSQL", 2, postgres.create_database("two"), args.requests, model
            ),
        ]
    finally:
        postgres.stop()
    base = rows[0]
    for row in rows:
        for path in ("batch", "interactive"):
            row[path]["vs_one_sqlite"] = round(
                row[path]["requests_per_s"] / base[path]["requests_per_s"], 2
            )
    report = {"requests": args.requests, "new_tokens": NEW_TOKENS, "slots": SLOTS, "rows": rows}
    out = ROOT / "bench" / "out" / f"scale-{args.requests}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
