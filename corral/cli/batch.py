"""``corral batch``: submit a JSONL file, follow it, fetch its results, cancel, list.

A client of the server's OpenAI Files and Batches routes (the server must run).
Files are streamed both ways, never read whole.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from corral.cli.client_auth import auth_headers
from corral.cli.help import App
from corral.settings import load_settings

app = App(help="OpenAI Batch API jobs: submit, status, results, cancel, list.")
console = Console()
err_console = Console(stderr=True)
TERMINAL = ("completed", "failed", "expired", "cancelled")


def _client() -> httpx.Client:
    settings, _ = load_settings()
    return httpx.Client(base_url=settings.base_url + "/v1", timeout=None, headers=auth_headers())


def _check(response: httpx.Response) -> Any:
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code >= 400:
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
        err_console.print(f"[red]error:[/red] {message or response.text[:300]}")
        raise typer.Exit(1)
    return data


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client() as client:
            return _check(client.request(method, path, **kwargs))
    except httpx.TransportError:
        settings, _ = load_settings()
        err_console.print(
            f"[red]error:[/red] Corral is not running at {settings.base_url}. "
            "Start it with `corral serve`."
        )
        raise typer.Exit(1) from None


def _with_model(source: Path, model: str | None) -> tuple[Path, str]:
    """A copy of ``source`` with every line's ``body.model`` set (if ``model`` is given),
    and the endpoint its lines use. Streams line by line."""
    endpoint = ""
    tmp = tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False)  # noqa: SIM115
    with source.open("rb") as src, tmp:
        for raw in src:
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                tmp.write(raw)  # the server names the bad line
                continue
            if isinstance(line, dict):
                endpoint = endpoint or str(line.get("url", ""))
                if model and isinstance(line.get("body"), dict):
                    line["body"]["model"] = model
                tmp.write(json.dumps(line).encode() + b"\n")
            else:
                tmp.write(raw)
    return Path(tmp.name), endpoint


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL of requests.", exists=True, dir_okay=False)],
    model: Annotated[str | None, typer.Option(help="Model for every request.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Default: the lines' url.")] = None,
    window: Annotated[str, typer.Option(help="completion_window.")] = "24h",
) -> None:
    """Upload FILE and start a batch; prints the batch id."""
    if model is not None:
        # A typo is the API's 404 (with its suggestions) now, not a batch failing every line.
        _call("GET", f"/models/{model}")
    upload, seen = _with_model(file, model)
    try:
        with upload.open("rb") as f:
            stored = _call(
                "POST", "/files", files={"file": (file.name, f)}, data={"purpose": "batch"}
            )
    finally:
        upload.unlink(missing_ok=True)
    batch = _call(
        "POST",
        "/batches",
        json={
            "input_file_id": stored["id"],
            "endpoint": endpoint or seen or "/v1/chat/completions",
            "completion_window": window,
        },
    )
    console.print(f"{batch['id']} ({stored['id']}, {stored['bytes']:,} bytes)")


@app.command()
def status(
    batch_id: Annotated[str, typer.Argument(help="Batch id.")],
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Until it ends.")] = True,
) -> None:
    """Show a batch's progress (a live bar until it ends, unless --no-follow)."""
    batch = _call("GET", f"/batches/{batch_id}")
    if follow and batch["status"] not in TERMINAL:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} req/s"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(
                batch["status"], total=batch["request_counts"]["total"], rate=0.0
            )
            start, first = time.monotonic(), _done(batch)
            while batch["status"] not in TERMINAL:
                elapsed = time.monotonic() - start
                rate = (_done(batch) - first) / elapsed if elapsed > 0 else 0.0
                progress.update(
                    task,
                    completed=_done(batch),
                    total=batch["request_counts"]["total"],
                    description=batch["status"],
                    rate=rate,
                )
                time.sleep(0.5)
                batch = _call("GET", f"/batches/{batch_id}")
            progress.update(task, completed=_done(batch), description=batch["status"])
    _print_batch(batch)
    if batch["status"] == "failed":
        raise typer.Exit(1)


def _done(batch: dict[str, Any]) -> int:
    counts = batch["request_counts"]
    return int(counts["completed"]) + int(counts["failed"])


def _print_batch(batch: dict[str, Any]) -> None:
    counts = batch["request_counts"]
    console.print(
        f"{batch['id']}: {batch['status']}, {counts['completed']} completed, "
        f"{counts['failed']} failed of {counts['total']}"
    )
    for error in (batch.get("errors") or {}).get("data") or []:
        console.print(f"  line {error.get('line')}: {error.get('message')}")


@app.command()
def results(
    batch_id: Annotated[str, typer.Argument(help="Batch id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write results.")],
    errors: Annotated[Path | None, typer.Option(help="Where to write the error file.")] = None,
) -> None:
    """Download a batch's output (and, with --errors, its error file)."""
    batch = _call("GET", f"/batches/{batch_id}")
    wanted = [(batch.get("output_file_id"), output)]
    if errors is not None:
        wanted.append((batch.get("error_file_id"), errors))
    for file_id, dest in wanted:
        if not file_id:
            note = "" if batch["status"] in TERMINAL else " yet"
            console.print(f"no results for {dest.name}{note} ({batch['status']})")
            continue
        with _client() as client, client.stream("GET", f"/files/{file_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            with dest.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        console.print(f"wrote {dest}")


@app.command()
def cancel(batch_id: Annotated[str, typer.Argument(help="Batch id.")]) -> None:
    """Stop a batch: no new request starts; finished results are kept."""
    _print_batch(_call("POST", f"/batches/{batch_id}/cancel"))


@app.command("list")
def list_batches(limit: Annotated[int, typer.Option(help="How many.")] = 20) -> None:
    """The newest batches."""
    page = _call("GET", "/batches", params={"limit": limit})
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "STATUS", "ENDPOINT", "MODEL", "DONE", "CREATED"):
        table.add_column(column)
    for b in page["data"]:
        counts = b["request_counts"]
        table.add_row(
            b["id"],
            b["status"],
            b["endpoint"],
            b["model"] or "-",
            f"{counts['completed'] + counts['failed']}/{counts['total']}",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(b["created_at"])),
        )
    console.print(table)
