"""The ``corral`` command: serve, import, list, run, config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from corral.errors import CorralError
from corral.settings import Settings, SettingsError, env_name, load_settings

app = typer.Typer(help="Corral: a local-first model server.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()
err_console = Console(stderr=True)

HomeOption = Annotated[
    Path | None, typer.Option("--home", help="Data directory (CORRAL_HOME).", show_default=False)
]


def _settings(**flags: Any) -> Settings:
    try:
        settings, _ = load_settings(flags)
    except SettingsError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    return settings


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per worker.")] = None,
    slots: Annotated[int | None, typer.Option(help="Concurrent requests per model.")] = None,
    context_length: Annotated[
        int | None, typer.Option(help="Context tokens per request slot.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tokens per decode step.")] = None,
    demo_model: Annotated[
        bool | None, typer.Option("--demo/--no-demo", help="Create the demo model if none.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    home: HomeOption = None,
) -> None:
    """Start the server (creates a tiny demo model first if no model is installed)."""
    from corral.cli.serve import run_server

    settings = _settings(
        host=host,
        port=port,
        threads=threads,
        slots=slots,
        context_length=context_length,
        batch_size=batch_size,
        demo_model=demo_model,
        log_level=log_level,
        home=home,
    )
    run_server(settings)


@app.command("import")
def import_model(
    path: Annotated[Path, typer.Argument(help="A local GGUF file.", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Name to give it (default: file stem).")] = None,
    home: HomeOption = None,
) -> None:
    """Add a local GGUF file to the models directory."""
    from corral.registry.store import ModelStore

    settings = _settings(home=home)
    store = ModelStore(settings.home)
    try:
        with console.status(f"Importing {path.name} (hashing {path.stat().st_size:,} bytes)"):
            record = store.import_file(path, name or path.stem)
    except CorralError as exc:
        raise _fail(exc.message) from None
    except ValueError as exc:
        raise _fail(f"{path} is not a valid GGUF file: {exc}") from None
    console.print(
        f"imported [bold]{record.name}[/bold] ({_size(record.size)}, "
        f"{record.info.architecture}, {record.info.quantization})"
    )


@app.command("list")
def list_models(home: HomeOption = None) -> None:
    """Show installed models."""
    from corral.registry.store import ModelStore

    records = ModelStore(_settings(home=home).home).list()
    if not records:
        console.print("No models installed. `corral import FILE.gguf` adds one.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ID", "SIZE", "PARAMS", "QUANT", "CONTEXT", "CAPABILITIES"):
        table.add_column(column)
    for r in records:
        note = " [yellow](random weights)[/yellow]" if r.info.synthetic else ""
        table.add_row(
            r.name + note,
            r.sha256[:12],
            _size(r.size),
            _count(r.info.parameters),
            r.info.quantization,
            str(r.info.context_length),
            ",".join(r.capabilities),
        )
    console.print(table)


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="Model to chat with.")],
    prompt: Annotated[str | None, typer.Argument(help="One prompt; omit to chat.")] = None,
    url: Annotated[str | None, typer.Option(help="Server URL (default: from settings).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Limit each answer.")] = None,
) -> None:
    """Chat with a model in the terminal, streaming (the server must be running)."""
    from corral.cli.chat import chat_loop

    settings = _settings()
    code = chat_loop(url or settings.base_url, model, prompt, max_tokens, console, err_console)
    raise typer.Exit(code)


def _admin(action: Any) -> None:
    from corral.cli.admin import ServerUnavailable

    try:
        action()
    except ServerUnavailable as exc:
        raise _fail(str(exc)) from None
    except RuntimeError as exc:
        raise _fail(str(exc)) from None


@app.command()
def ps() -> None:
    """Show loaded models: memory (estimated and measured), slots, queue, expiry."""
    from corral.cli.admin import show_ps

    _admin(lambda: show_ps(_settings().base_url, console))


@app.command()
def load(model: Annotated[str, typer.Argument(help="Model to load now.")]) -> None:
    """Load a model now (it stays until its keep-alive expires)."""
    from corral.cli.admin import call

    with console.status(f"Loading {model}"):
        _admin(lambda: call(_settings().base_url, "POST", f"/admin/models/{model}/load"))
    console.print(f"loaded {model}")


@app.command()
def stop(model: Annotated[str, typer.Argument(help="Model to unload.")]) -> None:
    """Unload a model once its in-flight requests are done."""
    from corral.cli.admin import call

    _admin(lambda: call(_settings().base_url, "POST", f"/admin/models/{model}/unload"))
    console.print(f"stopped {model}")


@app.command()
def reload(
    model: Annotated[str, typer.Argument(help="Model to restart.")],
    threads: Annotated[int | None, typer.Option(help="New thread count.")] = None,
    slots: Annotated[int | None, typer.Option(help="New slot count.")] = None,
    context_length: Annotated[int | None, typer.Option(help="New context per slot.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="New batch size.")] = None,
) -> None:
    """Restart a model with new parameters; queued requests wait and are served after."""
    from corral.cli.admin import call

    changes = {
        "threads": threads,
        "slots": slots,
        "context_length": context_length,
        "batch_size": batch_size,
    }
    body = {k: v for k, v in changes.items() if v is not None}
    url = _settings().base_url
    with console.status(f"Reloading {model}"):
        _admin(lambda: call(url, "POST", f"/admin/models/{model}/reload", body))
    console.print(f"reloaded {model} " + " ".join(f"{k}={v}" for k, v in body.items()))


@config_app.command("show")
def config_show() -> None:
    """Print every setting, its value and where the value came from."""
    try:
        settings, sources = load_settings()
    except SettingsError as exc:
        raise _fail(str(exc), 2) from None
    table = Table(box=None, pad_edge=False)
    for column in ("SETTING", "VALUE", "SOURCE", "ENV", "DESCRIPTION"):
        table.add_column(column)
    for name, field in Settings.model_fields.items():
        table.add_row(
            name,
            str(getattr(settings, name)),
            sources[name],
            env_name(name),
            field.description or "",
        )
    console.print(table)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def main() -> None:
    logging.captureWarnings(True)
    app()
