"""One gateway against two on one PostgreSQL database, and local workers against
workers placed by Ray, in one run: batch and interactive throughput on loopback.

    python bench/scale.py                      # 10,000 batch requests, tiny model
    python bench/scale.py --requests 20000
    python bench/scale.py --only ray           # the Ray comparison alone (2 rounds)
    python bench/scale.py --only ray-interactive --rounds 4 --requests 4000

Set-ups, each fresh, on the tiny model of bench/batch.py (16 new tokens per request,
1 llama.cpp thread per worker):

1. one gateway on SQLite (the default install), 8 slots;
2. one gateway on PostgreSQL (what the database costs), 8 slots;
3. two gateways on PostgreSQL sharing CORRAL_HOME, 8 slots: the batch is split between
   them by chunks, and the interactive clients alternate between them. Each gateway
   starts its own worker for the model.
4. one gateway, two local workers (``replicas: 2``, 4 slots each, so that 8 clients
   need both);
5. the same, the two workers placed by Ray (a local cluster: a head without CPUs and
   one node with 2; tests/support/ray_cluster.py): the Ray path's cost is 5 against 4;
6. two gateways on PostgreSQL, each with its worker placed by Ray (4 slots each).

For each: a batch of N requests (create to completed), then N requests from 8
concurrent clients. A PostgreSQL server is started for the run (Debian's binaries,
a Unix socket; tests/support/postgres.py). Results go to bench/out/scale-<n>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import statistics
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
from tests.support.ray_cluster import LocalRay  # noqa: E402

CLIENTS = 8


def start_gateway(
    home: Path, name: str, database_url: str | None, env: dict[str, str] | None = None
) -> tuple[Any, str]:
    """bench/batch.py's server, named for its leases, on the database when given."""
    env = {"CORRAL_GATEWAY_ID": name, **(env or {})}
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
    label: str,
    gateways: int,
    database_url: str | None,
    n: int,
    model: Path,
    replicas: int = 1,
    env: dict[str, str] | None = None,
    batch_too: bool = True,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        registry = Registry(home, database_url)
        registry.import_path(model, "bench", params={"replicas": replicas})
        registry.close()
        procs = [start_gateway(home, f"gw{i}", database_url, env) for i in range(gateways)]
        urls = [url for _, url in procs]
        try:
            batch = run_batch(urls, n, Path(tmp)) if batch_too else None
            if not batch_too:  # warm both workers first, as the batch does
                asyncio.run(run_interactive(urls, 200))
            interactive = asyncio.run(run_interactive(urls, n))
        finally:
            for proc, _ in procs:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in procs:
                proc.wait(60)
    row = {
        "setup": label,
        "gateways": gateways,
        "workers": gateways * replicas,
        "batch": batch,
        "interactive": interactive,
    }
    print(json.dumps(row), flush=True)
    return row


def ray_interactive(
    rounds: int, n: int, model: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Interactive only, three arms alternated ``rounds`` times (this machine's
    run-to-run spread is larger than the difference looked for), medians at the end:
    local workers; local workers with an idle Ray cluster beside them (what Ray's own
    daemons cost on a shared machine); the workers placed by Ray (the whole cost)."""
    four = {"CORRAL_SLOTS": "4"}
    rows: list[dict[str, Any]] = []
    arms: dict[str, list[float]] = {"local": [], "local_ray_idle": [], "ray": []}

    def arm(name: str, label: str, env: dict[str, str]) -> None:
        row = setup(label, 1, None, n, model, 2, {**four, **env}, batch_too=False)
        arms[name].append(row["interactive"]["requests_per_s"])
        rows.append(row)

    for round_ in range(1, rounds + 1):
        arm("local", f"local (round {round_})", {})
        with LocalRay(fast_health=False).running() as ray:
            ray.add_node("bench", cpus=2)
            arm("local_ray_idle", f"local, idle Ray beside (round {round_})", {})
            arm("ray", f"Ray (round {round_})", {"CORRAL_RAY_ADDRESS": ray.address})
    medians = {name: statistics.median(values) for name, values in arms.items()}
    summary = {
        "medians": medians,
        "ray_vs_local": round(medians["ray"] / medians["local"], 3),
        "ray_vs_local_with_idle_ray": round(medians["ray"] / medians["local_ray_idle"], 3),
    }
    print(json.dumps(summary), flush=True)
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument(
        "--only",
        choices=("gateways", "ray", "ray-interactive"),
        help="one comparison only (ray-interactive: local against Ray, no batches)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="local/Ray pairs, alternated")
    args = parser.parse_args()
    model = model_file("tiny")
    n = args.requests
    postgres = PostgresServer().start()
    rows = []
    summary: dict[str, Any] = {}
    try:
        if args.only in (None, "gateways"):
            rows += [
                setup("1 gateway, SQLite", 1, None, n, model),
                setup("1 gateway, PostgreSQL", 1, postgres.create_database("one"), n, model),
                setup("2 gateways, PostgreSQL", 2, postgres.create_database("two"), n, model),
            ]
        if args.only == "ray-interactive":
            more, summary["ray_interactive"] = ray_interactive(args.rounds, n, model)
            rows += more
        elif args.only != "gateways":
            four = {"CORRAL_SLOTS": "4"}
            for round_ in range(1, args.rounds + 1):  # alternated: drift hits both
                local = setup(
                    f"1 gateway, 2 local workers (round {round_})", 1, None, n, model, 2, four
                )
                with LocalRay(fast_health=False).running() as ray:
                    ray.add_node("bench", cpus=2)
                    on_ray = {**four, "CORRAL_RAY_ADDRESS": ray.address}
                    placed = setup(
                        f"1 gateway, 2 workers on Ray (round {round_})",
                        1,
                        None,
                        n,
                        model,
                        2,
                        on_ray,
                    )
                    if round_ == args.rounds:
                        pg = postgres.create_database("ray")
                        two = setup("2 gateways on PostgreSQL, Ray", 2, pg, n, model, 1, on_ray)
                for path in ("batch", "interactive"):
                    placed[path]["vs_local_workers"] = round(
                        placed[path]["requests_per_s"] / local[path]["requests_per_s"], 3
                    )
                rows += [local, placed]
            rows.append(two)
    finally:
        postgres.stop()
    base = rows[0]
    for row in rows:
        for path in ("batch", "interactive"):
            if row[path] is None:
                continue
            row[path]["vs_first_row"] = round(
                row[path]["requests_per_s"] / base[path]["requests_per_s"], 2
            )
    report = {
        "requests": args.requests,
        "new_tokens": NEW_TOKENS,
        "slots": SLOTS,
        "rows": rows,
        **summary,
    }
    out = ROOT / "bench" / "out" / f"scale-{args.requests}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
