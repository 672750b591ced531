"""``corral ps``, ``load``, ``stop`` and ``reload``: clients of the server's admin routes."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from corral.cli.client_auth import auth_headers
from corral.units import format_size


class ServerUnavailable(Exception):
    """The server is not running at the configured address."""


def call(base_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One admin request; returns the JSON body or raises with the server's message."""
    try:
        response = httpx.request(
            method, base_url + path, json=body, timeout=None, headers=auth_headers()
        )
    except httpx.TransportError:
        raise ServerUnavailable(
            f"Corral is not running at {base_url}. Start it with `corral serve`."
        ) from None
    data = response.json()
    if response.status_code >= 400:
        raise RuntimeError(data.get("error", {}).get("message", response.text))
    return data


def ps_table(models: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    on_gpus = any(m["memory"].get("gpus") for m in models)
    columns = ["NAME", "STATE", "MEMORY (EST / ACTUAL)", "SLOTS", "QUEUED", "IDLE", "UNTIL"]
    if on_gpus:  # without GPUs there is nothing to show
        columns.insert(3, "VRAM (EST / ACTUAL, GPUS)")
    for column in columns:
        table.add_column(column)
    for m in models:
        memory = m["memory"]
        actual = format_size(memory["actual"]) if memory["actual"] else "-"
        vram = [_vram(memory)] if on_gpus else []
        table.add_row(
            m["model"] + (f" #{m['replica']}" if m.get("replica") else ""),
            _state(m),
            f"{format_size(memory['estimated'])} / {actual}",
            *vram,
            f"{m['slots']['busy']}/{m['slots']['total']}",
            str(m["queued"]),
            f"{m['idle_seconds']:.0f}s",
            _until(m),
        )
    return table


def _vram(memory: dict[str, Any]) -> str:
    if not memory.get("gpus"):
        return "-"
    actual = memory.get("vram_actual")
    shown = format_size(actual) if actual is not None else "-"
    gpus = ",".join(map(str, memory["gpus"]))
    return f"{format_size(memory['vram_estimated'])} / {shown} (GPU {gpus})"


def _state(m: dict[str, Any]) -> str:
    if m["state"] != "failed":
        return str(m["state"])
    held = f", retry in {m['retry_in']:.0f} s" if m.get("retry_in") else ""
    crashes = f"{m['crashes']} crashes{held}: " if m.get("crashes", 0) > 1 else ""
    return f"failed ({crashes}{(m['last_error'] or '')[:40]})"


def _until(m: dict[str, Any]) -> str:
    if m["pinned"] or m["preloaded"] or m["expires_at"] is None:
        return "forever"
    left = m["expires_at"] - time.time()
    return f"{left / 60:.0f} min" if left >= 60 else f"{max(left, 0):.0f} s"


def show_ps(base_url: str, console: Console) -> None:
    models = call(base_url, "GET", "/admin/ps")["models"]
    if not models:
        console.print("No model is loaded.")
        return
    console.print(ps_table(models))
