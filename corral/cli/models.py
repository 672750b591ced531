"""``corral list``, ``show``, ``rm``, ``cp``, ``import`` and ``pull``: rendering only.

The work happens in the server or the local registry (``cli/registry.py``).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from corral.cli.registry import RegistryClient
from corral.units import format_size

POLL_SECONDS = 0.25


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ID", "SIZE", "FORMAT", "PARAMS", "QUANT", "CONTEXT", "MODIFIED"):
        table.add_column(column)
    for m in models:
        info = m["info"]
        note = " [yellow](random weights)[/yellow]" if info.get("synthetic") else ""
        aliases = f" [dim](also {', '.join(m['aliases'])})[/dim]" if m["aliases"] else ""
        default = " [green](default)[/green]" if _versioned_default(m, models) else ""
        table.add_row(
            m["name"] + default + note + aliases,
            m["sha256"][:12],
            format_size(m["size"]),
            m["format"],
            count(info["parameters"]),
            info["quantization"],
            str(info["context_length"] or "-"),
            ago(m["created_at"]),
        )
    return table


def _versioned_default(m: dict[str, Any], models: list[dict[str, Any]]) -> bool:
    """Worth marking: the version a bare name means, among several or not ``latest``."""
    if not m.get("default"):
        return False
    base, _, tag = str(m["name"]).rpartition(":")
    return tag != "latest" or sum(x["name"].startswith(base + ":") for x in models) > 1


def show_model(m: dict[str, Any], console: Console) -> None:
    info = m["info"]
    rows = [
        ("name", m["name"]),
        ("aliases", ", ".join(m["aliases"]) or "-"),
        ("source", m["source"] or "-"),
        ("revision", m["revision"] or "-"),
        ("format", m["format"]),
        ("architecture", info["architecture"]),
        ("parameters", f"{info['parameters']:,}"),
        ("quantization", info["quantization"]),
        ("context length", str(info["context_length"])),
        ("chat template", "yes" if info["has_chat_template"] else "no (ChatML fallback)"),
        ("capabilities", ", ".join(m["capabilities"])),
        ("size", format_size(m["size"])),
        ("created", ago(m["created_at"])),
        ("last used", ago(m["last_used_at"]) if m["last_used_at"] else "never"),
    ]
    if m["params"]:
        rows.append(("parameters set", " ".join(f"{k}={v}" for k, v in m["params"].items())))
    if info.get("synthetic"):
        rows.append(("note", info["synthetic"]))
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    files = Table(box=None, pad_edge=False)
    for column in ("FILE", "SIZE", "SHA256"):
        files.add_column(column)
    for f in m["files"]:
        files.add_row(f["path"], format_size(f["size"]), f["sha256"])
    console.print(files)


def show_inspection(facts: dict[str, Any], console: Console) -> None:
    """``corral inspect``: the facts as a table; tensors and operators as their own."""
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        if key in ("inputs", "outputs", "operators"):
            continue
        if key == "size":
            value = format_size(value)
        elif key == "parameters" and isinstance(value, int):
            value = f"{value:,}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)
    for side in ("inputs", "outputs"):
        if facts.get(side):
            tensors = Table(title=side, box=None, pad_edge=False, title_justify="left")
            for column in ("NAME", "DATATYPE", "SHAPE"):
                tensors.add_column(column)
            for t in facts[side]:
                shape = t.get("type") if t.get("shape") is None else str(t["shape"])
                tensors.add_row(t["name"], t["datatype"], shape or "-")
            console.print(tensors)
    if facts.get("operators"):
        ops = Table(title="operators", box=None, pad_edge=False, title_justify="left")
        ops.add_column("OPERATOR")
        ops.add_column("COUNT", justify="right")
        for op, n in facts["operators"].items():
            ops.add_row(op, str(n))
        console.print(ops)


def follow_pull(client: RegistryClient, job: dict[str, Any], console: Console) -> dict[str, Any]:
    """Show a pull's progress until it ends; Ctrl-C cancels it (bytes are kept)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"pulling {job['model']}", total=job["bytes_total"])
        try:
            while job["state"] in ("queued", "running"):
                progress.update(task, completed=job["bytes_done"], total=job["bytes_total"])
                time.sleep(POLL_SECONDS)
                job = client.pull_status(job["id"])
        except KeyboardInterrupt:
            job = client.cancel_pull(job["id"])
        progress.update(task, completed=job["bytes_done"], total=job["bytes_total"])
    return job


def count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n) if n else "-"


def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(time.time() - timestamp, 0)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"
