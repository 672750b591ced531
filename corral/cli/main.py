"""The ``corral`` command: serve, models (pull, import, list, show, rm, cp, create), run, config."""

from __future__ import annotations

import logging
import time
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
def bench(
    model: Annotated[str, typer.Argument(help="A tensor model (a version: NAME:TAG).")],
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="Rows per request, comma-separated.")
    ] = "1,8,32",
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Clients at once, comma-separated.")
    ] = "1,8,32",
    duration: Annotated[
        str, typer.Option("--duration", help="Each measurement's length: 10s, 500ms, 1m.")
    ] = "10s",
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--compare",
            help="Two versions side by side (their latest runs; one with none is run now).",
            show_default=False,
        ),
    ] = None,
    history: Annotated[bool, typer.Option("--history", help="List the saved runs.")] = False,
    local: Annotated[
        bool,
        typer.Option("--in-process/--no-in-process", help="Also run the model in this process."),
    ] = True,
    save: Annotated[
        bool, typer.Option("--save/--no-save", help="Keep the run in the registry.")
    ] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """Latency (p50/p95/p99) and throughput of a tensor model through the server (V2)
    and in this process (onnxruntime), kept as benchmark history with machine facts."""
    from corral.cli.bench import BenchError, BenchPlan, parse_counts, parse_duration
    from corral.cli.bench_command import BenchCommand

    try:
        plan = BenchPlan(
            parse_counts(batch_sizes, "--batch-sizes"),
            parse_counts(concurrency, "--concurrency"),
            parse_duration(duration),
            in_process=local,
        )
    except BenchError as exc:
        raise _fail(str(exc), 2) from None
    client = _registry(home)
    command = BenchCommand(client, _settings(home=home), console, save=save, as_json=json_output)
    try:
        if history:
            _registry_call(lambda: command.history(model))
        elif compare:
            _registry_call(lambda: command.compare(model, compare, plan))
        else:
            _registry_call(lambda: command.measure(model, plan))
    except BenchError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="A tensor model (NAME or NAME:VERSION).")],
    source: Annotated[
        Path,
        typer.Argument(help="Rows: a .csv, .jsonl or .npy file.", exists=True, dir_okay=False),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Answers: a .jsonl or .csv file.")],
    errors: Annotated[
        Path | None,
        typer.Option(help="Failed rows (default: OUTPUT with .errors.jsonl).", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per request.", min=1, max=65536)] = 256,
    in_flight: Annotated[int, typer.Option(help="Requests at once.", min=1, max=64)] = 2,
    home: HomeOption = None,
) -> None:
    """Run every row of a file through a tensor model (streamed: memory holds the rows
    in flight). Rows that fail go to the errors file with their line number; the run
    goes on, and exits 3 if any failed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from corral.cli.client_auth import auth_headers
    from corral.cli.predict import Client, PredictError, Tally, Writer, model_url, open_source
    from corral.cli.predict import predict as run_predict

    registry = _registry(home)
    where = registry.where
    m = _registry_call(lambda: registry.show(model))
    registry.close()
    if not where.startswith("http"):
        raise _fail("corral predict sends rows to the server: start it (corral serve).")
    errors_path = errors or output.with_name(output.stem + ".errors.jsonl")
    client = Client(model_url(where, m), auth_headers())
    started = time.monotonic()
    try:
        source_rows = open_source(source, client.metadata())
        writer = Writer(output, errors_path)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[rows]:,} rows, {task.fields[failed]:,} failed"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console) as progress:
            task = progress.add_task(
                f"{m['name']} <- {source.name}", total=source_rows.total, rows=0, failed=0
            )

            def advance(position: int, tally: Tally) -> None:
                progress.update(task, completed=position, rows=tally.rows, failed=tally.failed)

            try:
                tally = run_predict(
                    client,
                    source_rows,
                    writer,
                    batch_size=batch_size,
                    in_flight=in_flight,
                    progress=advance,
                )
            finally:
                writer.close()
            progress.update(task, completed=source_rows.total)
    except PredictError as exc:
        raise _fail(str(exc)) from None
    finally:
        client.close()
    seconds = max(time.monotonic() - started, 1e-9)
    console.print(
        f"predicted {tally.rows:,} rows with {m['name']} into {output} "
        f"in {seconds:.1f} s ({tally.rows / seconds:,.0f} rows/s)"
    )
    if tally.failed:
        err_console.print(f"[yellow]{tally.failed:,} rows failed[/yellow], see {errors_path}:")
        for line in tally.first_errors:
            err_console.print(f"  {line}")
        raise typer.Exit(3)


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
def default(
    model: Annotated[str, typer.Argument(help="A version (NAME:TAG), or NAME with --newest.")],
    newest: Annotated[
        bool, typer.Option("--newest", help="Let NAME mean its newest version again.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Choose which version a model's bare name means (default: the newest)."""
    client = _registry(home)
    if newest:
        m = _registry_call(lambda: client.clear_default(model))
    else:
        m = _registry_call(lambda: client.set_default(model))
    client.close()
    base = m["name"].rpartition(":")[0]
    console.print(f"{base} means [bold]{m['name']}[/bold]")


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
def create(
    name: Annotated[str, typer.Argument(help="The new model's name.")],
    source: Annotated[
        str, typer.Option("--from", help="Existing model whose files it uses (shared).")
    ],
    engine: Annotated[
        str | None, typer.Option(help="Engine that runs it (command, llamacpp, ...).")
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            help="Shorthand for --engine command --param command=...: the server to run, "
            "with macros (${PORT}, ${MODEL_PATH}, ...; corral config show lists them)."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="KEY=VALUE engine parameter (repeatable)."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """A new name over a model's files with its own engine and parameters, e.g. the same
    GGUF served by llama-server: corral create q-ls --from q --command 'llama-server -m
    ${MODEL_PATH} --port ${PORT}'."""
    from corral.cli.create import create as create_model
    from corral.cli.create import parse_params

    client = _registry(home)
    params = _registry_call(lambda: parse_params(param or []))
    if command is not None:
        params["command"] = command
        engine = engine or "command"
    m = _registry_call(lambda: create_model(client, name, source, engine, params))
    client.close()
    console.print(f"created [bold]{m['name']}[/bold] from {source} (engine {m['runs_on']})")


@app.command()
def plan(
    model: Annotated[
        str, typer.Argument(help="A model name, a GGUF file, or a config.json (or its dir).")
    ],
    gpu: Annotated[
        str | None, typer.Option(help="GPU memory, e.g. 24GB (default: this machine's).")
    ] = None,
    ram: Annotated[
        str | None, typer.Option(help="RAM, e.g. 120GB (default: this machine's).")
    ] = None,
    context: Annotated[int, typer.Option(help="Context tokens per slot.")] = 8192,
    slots: Annotated[int, typer.Option(help="Sequences served at once.")] = 1,
    quant: Annotated[
        str | None, typer.Option(help="Quantizations to plan, comma-separated (Q4_K_M,AWQ-4bit).")
    ] = None,
    gpu_bandwidth: Annotated[str | None, typer.Option(help="GPU bytes/s, e.g. 1000GB.")] = None,
    ram_bandwidth: Annotated[str | None, typer.Option(help="RAM bytes/s, e.g. 60GB.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """How a model fits on a GPU and in RAM, and why: weights, KV cache, where llama.cpp
    and vLLM would put what, the longest context and the tokens/s to expect."""
    import json

    from pydantic import ValidationError

    from corral.cli.plan import make_plan, show
    from corral.engines.plan import PlanError
    from corral.errors import CorralError
    from corral.protocol.plan import PlanRequest

    try:
        ask = PlanRequest(
            model=model,
            gpu=gpu,
            ram=ram,
            context=context,
            slots=slots,
            quants=quant.split(",") if quant else None,
            gpu_bandwidth=gpu_bandwidth,
            ram_bandwidth=ram_bandwidth,
        )
        result = make_plan(_settings(home=home), model, ask)
    except (ValidationError, PlanError, CorralError, KeyError) as exc:
        raise _fail(str(getattr(exc, "message", exc))) from None
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        show(result, console)


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
