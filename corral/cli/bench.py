"""``corral bench MODEL``: a tensor model's latency and throughput through the server (V2
REST) and in this process (onnxruntime, the same session settings as its worker), at
each batch size and number of clients; kept in the registry as benchmark history.

Inputs are random, shaped by the model's own metadata. Both sides run on this machine
one after the other, so the table shows what the server adds and what batching and
concurrency buy; the machine's facts are saved with the figures, since a figure means
nothing without the machine it came from.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from corral.cli.load import through_server
from corral.cli.replies import error_message
from corral.engines.descriptor import modules_installed
from corral.protocol.tensors import random_inputs

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


class BenchError(Exception):
    """The bench cannot run (no server, not a tensor model); the message says why."""


@dataclass(frozen=True)
class BenchPlan:
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    duration: float  # seconds per measurement
    in_process: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_sizes": list(self.batch_sizes),
            "concurrency": list(self.concurrency),
            "duration_s": self.duration,
        }


def parse_counts(text: str, what: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); each at least 1."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"{what} is a list of whole numbers like 1,8,32, not {text!r}.") from None
    if not values or min(values) < 1 or max(values) > 4096:
        raise BenchError(f"{what}: give numbers from 1 to 4096, like 1,8,32.")
    return values


def parse_duration(text: str) -> float:
    """``"10s"``, ``"500ms"``, ``"1m"`` or ``"10"`` (seconds)."""
    match = _DURATION.match(text)
    if match is None:
        raise BenchError(f"A duration is like 10s, 500ms or 1m, not {text!r}.")
    value = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2] or "s"]
    if not 0.05 <= value <= 3600:
        raise BenchError("A duration is from 50ms to 60m.")
    return value


def machine_facts(server: str) -> dict[str, Any]:
    """What the figures depend on: the CPU, cores, memory, and the software."""
    import psutil

    from corral import __version__

    facts: dict[str, Any] = {
        "host": platform.node(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "corral": __version__,
        "server": server,
    }
    for package in ("onnxruntime", "onnxruntime-gpu"):
        # Its version without importing it: the CLI imports no engine library.
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            facts[package] = importlib.metadata.version(package)
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Bench:
    """Runs a plan against one version of a model on a running server."""

    def __init__(self, base_url: str, headers: dict[str, str], console: Console) -> None:
        self.base_url = base_url
        self.headers = headers
        self.console = console

    def run(self, model: dict[str, Any], plan: BenchPlan) -> list[dict[str, Any]]:
        """Every (batch size, clients) pair through the server, then the same pairs
        with the model called directly; rows in (batch size, clients) order."""
        if "tensor" not in model.get("capabilities", []):
            raise BenchError(
                f"{model['name']} is not a tensor model: corral bench measures models "
                "served over the Open Inference Protocol (V2)."
            )
        base, _, tag = model["name"].rpartition(":")
        url = f"{self.base_url}/v2/models/{base}/versions/{tag}"
        meta = self._metadata(url)
        rows: list[dict[str, Any]] = []
        runs: list[tuple[int, int]] = []
        for batch in plan.batch_sizes:
            try:
                inputs = random_inputs(meta["inputs"], batch)
            except ValueError as exc:
                self.console.print(f"[yellow]skipped batch size {batch}:[/yellow] {exc}")
                continue
            for clients in plan.concurrency:
                label = f"{model['name']}: batch {batch}, {clients} client(s), through the server"
                with self.console.status(label):
                    measured = through_server(
                        url + "/infer", inputs, clients, plan.duration, self.headers
                    )
                rows.append(self._row(measured.to_dict()))
                runs.append((batch, clients))
        if plan.in_process and runs and self._can_run_here(model):
            with self.console.status(f"{model['name']}: called directly, in its own process"):
                rows += [self._row(r) for r in self._directly(model, meta, runs, plan.duration)]
        order = {"server": 0, "in-process": 1}
        return sorted(rows, key=lambda r: (r["batch_size"], r["concurrency"], order[r["path"]]))

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["errors"] and not row["requests"]:
            self.console.print(f"[red]{row['path']} failed:[/red] {row['first_error']}")
        return row

    def _metadata(self, url: str) -> dict[str, Any]:
        try:
            reply = httpx.get(url, headers=self.headers, timeout=600)
        except httpx.TransportError as exc:
            raise BenchError(f"The server at {self.base_url} did not answer: {exc}") from None
        if reply.status_code != 200:
            raise BenchError(f"{url}: {reply.status_code} {error_message(reply)}")
        meta: dict[str, Any] = reply.json()
        return meta

    def _can_run_here(self, model: dict[str, Any]) -> bool:
        """Whether this machine can call the model directly (said why not)."""
        if model.get("runs_on") != "onnx" or not model.get("engine_params"):
            self.console.print("[yellow]direct runs are for the onnx engine only[/yellow]")
            return False
        if not modules_installed("onnxruntime"):
            self.console.print(
                "[yellow]no direct runs: onnxruntime is not installed here "
                "(pip install 'corral[onnx]')[/yellow]"
            )
            return False
        if not Path(model["path"]).exists():
            self.console.print(f"[yellow]no direct runs: {model['path']} is not here[/yellow]")
            return False
        return True

    def _directly(
        self,
        model: dict[str, Any],
        meta: dict[str, Any],
        runs: list[tuple[int, int]],
        duration: float,
    ) -> list[dict[str, Any]]:
        job = {
            "path": model["path"],
            "params": model["engine_params"],
            "inputs": meta["inputs"],
            "duration": duration,
            "runs": runs,
        }
        done = subprocess.run(
            [sys.executable, "-m", "corral.engines.onnx.measure"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=duration * len(runs) * 3 + 300,
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            self.console.print(f"[red]direct runs failed:[/red] {tail[0]}")
            return []
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows


# --- rendering --------------------------------------------------------------------------


def results_table(rows: Iterable[dict[str, Any]], title: str | None = None) -> Table:
    """One row per measurement; a server row also shows its p50 over in-process's."""
    rows = list(rows)
    local = {(r["batch_size"], r["concurrency"]): r for r in rows if r["path"] == "in-process"}
    table = Table(title=title, box=None, pad_edge=False, title_justify="left")
    for column in ("PATH", "BATCH", "CLIENTS", "REQ/S", "ROWS/S", "P50 MS", "P95 MS", "P99 MS"):
        table.add_column(column, justify="left" if column == "PATH" else "right")
    table.add_column("+P50 MS", justify="right")
    table.add_column("ERRORS", justify="right")
    for r in rows:
        twin = local.get((r["batch_size"], r["concurrency"])) if r["path"] == "server" else None
        added = f"{r['p50_ms'] - twin['p50_ms']:.2f}" if twin and twin["requests"] else ""
        table.add_row(
            r["path"],
            str(r["batch_size"]),
            str(r["concurrency"]),
            f"{r['requests_per_s']:,.1f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            added,
            str(r["errors"]) if r["errors"] else "",
        )
    return table


def history_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "VERSION", "WHEN", "MACHINE", "BEST ROWS/S", "BEST P50 MS"):
        table.add_column(column)
    from corral.cli.models import ago

    for run in runs:
        served = [r for r in run["results"] if r["path"] == "server" and r["requests"]]
        machine = run["machine"]
        table.add_row(
            str(run["id"]),
            run["model"],
            ago(run["created_at"]),
            f"{machine.get('cpu', '?')} x{machine.get('logical_cores', '?')}",
            f"{max((r['rows_per_s'] for r in served), default=0):,.0f}",
            f"{min((r['p50_ms'] for r in served), default=0):.2f}",
        )
    return table


def comparison_table(first: dict[str, Any], second: dict[str, Any]) -> Table:
    """Two versions' latest runs, measurement by measurement: what the second gains."""
    a_name, b_name = first["model"], second["model"]
    table = Table(
        title=f"{a_name} (run {first['id']}) vs {b_name} (run {second['id']})",
        box=None,
        pad_edge=False,
        title_justify="left",
    )
    for column in ("PATH", "BATCH", "CLIENTS"):
        table.add_column(column, justify="left" if column == "PATH" else "right")
    for column in (f"P50 {a_name}", f"P50 {b_name}", f"ROWS/S {a_name}", f"ROWS/S {b_name}"):
        table.add_column(column, justify="right")
    table.add_column("SPEED", justify="right")
    theirs = {(r["path"], r["batch_size"], r["concurrency"]): r for r in second["results"]}
    for a in first["results"]:
        b = theirs.get((a["path"], a["batch_size"], a["concurrency"]))
        if b is None:
            continue
        speed = f"{b['rows_per_s'] / a['rows_per_s']:.2f}x" if a["rows_per_s"] else "-"
        table.add_row(
            a["path"],
            str(a["batch_size"]),
            str(a["concurrency"]),
            f"{a['p50_ms']:.2f}",
            f"{b['p50_ms']:.2f}",
            f"{a['rows_per_s']:,.0f}",
            f"{b['rows_per_s']:,.0f}",
            speed,
        )
    return table
