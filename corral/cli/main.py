"""The ``corral`` command: serve, models (pull, import, list, show, rm, cp), run, config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from corral.cli.batch import app as batch_app
from corral.cli.flags import with_generated_flags
from corral.cli.help import App
from corral.cli.keys import app as keys_app
from corral.settings import Settings, SettingsError, env_name, load_settings

app = App(help="Corral: a local-first model server.", no_args_is_help=True)
config_app = App(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(batch_app, name="batch")
app.add_typer(keys_app, name="keys")
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from corral import __version__

        console.print(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Corral: a local-first model server."""


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


def _catalog(settings: Settings, flags: dict[str, Any] | None = None) -> Any:
    """The engines, with their parameters from ``CORRAL_*`` variables and ``flags``."""
    from corral.engines.catalog import EngineSettingsError, load_catalog

    try:
        return load_catalog(settings.engines, flags=flags)
    except EngineSettingsError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _serve(setting_flags: dict[str, Any], engine_flags: dict[str, Any]) -> None:
    from corral.cli.serve import ServeRefused, bind, check_bind, run_server

    settings = _settings(**setting_flags)
    try:
        check_bind(settings)
        sock = bind(settings)
    except ServeRefused as exc:
        raise _fail(str(exc), 2) from None
    run_server(settings, _catalog(settings, engine_flags), sock)


app.command(
    name="serve",
    help="Start the server (creates a tiny demo model first if no model is installed). "
    "Every setting and engine parameter is a flag; each also reads its CORRAL_* variable.",
)(with_generated_flags(_serve))


def _registry(home: Path | None = None) -> Any:
    from corral.cli.registry import connect

    return connect(_settings(home=home))


def _registry_call(action: Any) -> Any:
    from corral.cli.registry import RegistryError

    try:
        return action()
    except RegistryError as exc:
        raise _fail(str(exc)) from None


@app.command("import")
def import_model(
    path: Annotated[
        Path, typer.Argument(help="A local GGUF or ONNX file, or a model directory.", exists=True)
    ],
    name: Annotated[str | None, typer.Option(help="Name to give it (default: file stem).")] = None,
    home: HomeOption = None,
) -> None:
    """Add a local model file or directory to the registry."""
    client = _registry(home)
    with console.status(f"Importing {path.name} (copying and hashing)"):
        m = _registry_call(lambda: client.import_path(path, name))
    client.close()
    info = m["info"]
    console.print(
        f"imported [bold]{m['name']}[/bold] ({_size(m['size'])}, {m['format']}, "
        f"{info['architecture']}, {info['quantization']})"
    )


@app.command("list")
def list_models(home: HomeOption = None) -> None:
    """Show installed models."""
    from corral.cli.models import models_table

    client = _registry(home)
    models = _registry_call(client.list)
    client.close()
    if not models:
        console.print("No models installed. `corral pull REF` or `corral import FILE` adds one.")
        return
    console.print(models_table(models))


@app.command()
def show(
    model: Annotated[str, typer.Argument(help="Model name or alias.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """Show a model: source, revision, files with sha256, header facts."""
    from corral.cli.models import show_model

    client = _registry(home)
    m = _registry_call(lambda: client.show(model))
    client.close()
    if json_output:
        console.print_json(data=m)
    else:
        show_model(m, console)


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Model name or alias.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """Inspect a model's file: an ONNX graph's opsets, producer, tensors (symbolic
    dimensions named), parameters, operators and metadata; a GGUF's header facts."""
    from corral.cli.models import show_inspection

    client = _registry(home)
    facts = _registry_call(lambda: client.inspect(model))
    client.close()
    if json_output:
        console.print_json(data=facts)
    else:
        show_inspection(facts, console)


@app.command()
def schema(
    model: Annotated[str, typer.Argument(help="Model name or alias.")],
    home: HomeOption = None,
) -> None:
    """JSON Schemas of a tensor model's V2 infer request and response, and an example
    request (needs a running server: the model's worker reads its tensors)."""
    client = _registry(home)
    result = _registry_call(lambda: client.schema(model))
    client.close()
    console.print_json(data=result)


@app.command()
def rm(
    models: Annotated[list[str], typer.Argument(help="Models (or aliases) to remove.")],
    home: HomeOption = None,
) -> None:
    """Remove models (a loaded one is stopped first); files other models use stay."""
    client = _registry(home)
    for model in models:
        removed = _registry_call(lambda m=model: client.remove(m))
        console.print(f"deleted {', '.join(removed)}")
    client.close()


@app.command()
def cp(
    source: Annotated[str, typer.Argument(help="Existing model.")],
    destination: Annotated[str, typer.Argument(help="New name for the same files.")],
    home: HomeOption = None,
) -> None:
    """Give a model a second name (its files are shared, not copied)."""
    client = _registry(home)
    m = _registry_call(lambda: client.copy(source, destination))
    client.close()
    console.print(f"copied {source} to [bold]{m['name']}[/bold]")


@app.command()
def pull(
    ref: Annotated[
        str,
        typer.Argument(
            help="hf.co/ORG/REPO[:QUANT_OR_FILE], ORG/REPO, an https:// URL or a local path."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Model name (default: from REF).")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected checksum (URLs).")] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start the pull on the server and return.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Download a model with progress; an interrupted pull resumes where it stopped."""
    from corral.cli.models import follow_pull

    client = _registry(home)
    job = _registry_call(lambda: client.pull(ref, name=name, revision=revision, sha256=sha256))
    if detach and client.where.startswith("http"):
        console.print(f"pull {job['id']} started for {job['model']}")
        client.close()
        return
    job = follow_pull(client, job, console)
    client.close()
    if job["state"] == "completed":
        console.print(f"pulled [bold]{job['model']}[/bold] ({_size(job['bytes_total'] or 0)})")
    elif job["state"] == "cancelled":
        raise _fail(f"pull cancelled; {_size(job['bytes_done'])} kept, pull again to resume", 130)
    else:
        raise _fail(job["error"] or f"pull ended {job['state']}")


FileOption = Annotated[
    Path, typer.Option("--file", "-f", help="The model declarations.", dir_okay=False)
]


def _declarations(path: Path) -> Any:
    from corral.registry.declared import DeclarationError, DeclarationErrors, load_declarations

    try:
        return load_declarations(path)
    except (DeclarationError, DeclarationErrors) as exc:
        raise _fail(str(exc), 2) from None
    except FileNotFoundError:
        raise _fail(f"{path} not found", 2) from None


@app.command()
def sync(
    file: FileOption = Path("corral.yaml"),
    locked: Annotated[
        bool, typer.Option("--locked", help="Install exactly corral.lock; any drift is an error.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Make the registry match corral.yaml (pull what is missing or changed)."""
    from corral.cli.sync import SyncError
    from corral.cli.sync import sync as run_sync
    from corral.registry.declared import DeclarationError, DeclarationErrors, read_lock

    declared = _declarations(file)
    lock = None
    if locked:
        lock_path = file.with_suffix(".lock")
        try:
            lock = read_lock(lock_path)
        except FileNotFoundError:
            raise _fail(f"{lock_path} not found; run `corral lock` first", 2) from None
        except (DeclarationError, DeclarationErrors) as exc:
            raise _fail(str(exc), 2) from None
    client = _registry(home)
    try:
        _registry_call(lambda: run_sync(client, declared, file.resolve().parent, console, lock))
    except SyncError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()


@app.command()
def lock(file: FileOption = Path("corral.yaml"), home: HomeOption = None) -> None:
    """Sync, then write corral.lock with the exact revisions and sha256 of every file."""
    from corral.cli.sync import SyncError, lock_from_installed
    from corral.cli.sync import sync as run_sync
    from corral.registry.declared import write_lock

    declared = _declarations(file)
    client = _registry(home)
    try:
        _registry_call(lambda: run_sync(client, declared, file.resolve().parent, console))
        base = file.resolve().parent
        lock_file = _registry_call(lambda: lock_from_installed(client, declared, base))
    except SyncError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()
    path = file.with_suffix(".lock")
    write_lock(path, lock_file)
    count = len(lock_file.models)
    console.print(f"wrote {path} ({count} model{'' if count == 1 else 's'})")


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="Model to chat with.")],
    prompt: Annotated[str | None, typer.Argument(help="One prompt; omit to chat.")] = None,
    url: Annotated[str | None, typer.Option(help="Server URL (default: from settings).")] = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            help="Most tokens per answer (0: until the model stops or its context is full). "
            "The offline demo model never stops by itself."
        ),
    ] = 512,
) -> None:
    """Chat with a model in the terminal, streaming (the server must be running)."""
    from corral.cli.chat import chat_loop

    settings = _settings()
    limit = max_tokens or None
    code = chat_loop(url or settings.base_url, model, prompt, limit, console, err_console)
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
def logs(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last 1h, 30m...")] = None,
    status: Annotated[str | None, typer.Option(help="Only 2xx, 4xx or 5xx.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the request log: who asked what, with which status, tokens and timings."""
    from corral.cli.logs import show_logs

    filters = {"model": model, "key": key, "since": since, "status": status}
    query = {k: v for k, v in filters.items() if v} | {"limit": str(limit)}
    try:
        _admin(lambda: show_logs(_settings().base_url, console, query, follow, as_json))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


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
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Any engine parameter, NAME=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Restart a model with new parameters; queued requests wait and are served after."""
    from corral.cli.admin import call

    changes: dict[str, Any] = {
        "threads": threads,
        "slots": slots,
        "context_length": context_length,
        "batch_size": batch_size,
    }
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--param takes NAME=VALUE, not {item!r}", 2)
        changes[key.strip().replace("-", "_")] = value
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
        # Fold, never cut: a CORRAL_* name shown with "…" cannot be copied.
        table.add_column(column, overflow="fold")
    for name, field in Settings.model_fields.items():
        table.add_row(
            name,
            _effective(settings, name),
            sources[name],
            env_name(name),
            field.description or "",
        )
    catalog = _catalog(settings)
    for descriptor in catalog.descriptors:
        defaults = catalog.defaults[descriptor.name]
        for name, field in descriptor.params_model.model_fields.items():
            table.add_row(
                f"{descriptor.name}.{name}",
                str(getattr(defaults, name)),
                catalog.sources.get((descriptor.name, name), "default"),
                env_name(name),
                field.description or "",
            )
    console.print(table)


def _effective(settings: Settings, name: str) -> str:
    """A setting's value as it acts: an automatic memory budget shows what it is now."""
    if name == "memory_budget" and settings.memory_budget is None:
        from corral.scheduler.memory import SystemMemory
        from corral.units import format_size

        available = SystemMemory().available()
        budget = available - settings.memory_reserve_bytes
        return (
            f"auto: {format_size(budget)} now (available {format_size(available)} "
            f"- reserve {settings.memory_reserve})"
        )
    return str(getattr(settings, name))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def main() -> None:
    logging.captureWarnings(True)
    app()
