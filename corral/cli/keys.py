"""``corral keys``: create, list and revoke API keys, on the registry database itself.

Direct, not through the server: the first key has to be made before any key exists to
make it with, and whoever runs this owns the server's home anyway. A running server
sees a new or revoked key within two seconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.cli.help import App
from corral.errors import CorralError
from corral.settings import Settings, load_settings
from corral.units import parse_keep_alive

if TYPE_CHECKING:
    from corral.keys.store import KeyStore

app = App(help="API keys: create, list, revoke.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _store() -> KeyStore:
    # Imported here: the database layer is not loaded for every `corral` command.
    from corral.keys.store import KeyStore
    from corral.registry.db import open_database

    settings, _ = load_settings({})
    return KeyStore(open_database(_url(settings)))


def _url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    settings.home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{settings.home / 'registry.db'}"


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    scope: Annotated[
        str, typer.Option(help="inference (the APIs) or admin (also models, pulls, keys).")
    ] = "inference",
    models: Annotated[
        str, typer.Option(help="Models the key may use, comma-separated (default: all).")
    ] = "",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    daily_tokens: Annotated[int | None, typer.Option(help="Tokens per UTC day.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Requests at once.")] = None,
    expires: Annotated[str | None, typer.Option(help="Valid for: 30d, 12h, 90m.")] = None,
) -> None:
    """Create a key and print it: this is the only time it is shown."""
    try:
        expires_in = parse_keep_alive(expires) if expires else None
    except ValueError as exc:
        raise _fail(f"--expires: {exc}") from None
    if scope not in ("inference", "admin"):
        raise _fail("--scope must be inference or admin.")
    try:
        created = _store().create(
            name,
            "admin" if scope == "admin" else "inference",
            [m for m in models.split(",") if m.strip()],
            rpm,
            tpm,
            daily_tokens,
            max_concurrent,
            expires_in,
        )
    except CorralError as exc:
        raise _fail(exc.message) from None
    err_console.print(
        f"created {created.key.scope} key [bold]{created.key.name}[/bold] ({created.key.id}); "
        "it is shown once, here:"
    )
    print(created.secret)  # stdout alone, for scripts: KEY=$(corral keys create ...)


@app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """Show keys (their prefixes, never the secrets), scopes, models and limits."""
    table = Table(box=None, pad_edge=False)
    for column in ("ID", "NAME", "KEY", "SCOPE", "MODELS", "LIMITS", "STATE", "EXPIRES"):
        table.add_column(column)
    for key in _store().list(include_revoked=all_keys):
        limits = ", ".join(
            f"{v} {label}"
            for v, label in (
                (key.rpm, "rpm"),
                (key.tpm, "tpm"),
                (key.daily_tokens, "tokens/day"),
                (key.max_concurrent, "at once"),
            )
            if v is not None
        )
        expires = (
            "-"
            if key.expires_at is None
            else time.strftime("%Y-%m-%d %H:%M", time.localtime(key.expires_at))
        )
        table.add_row(
            key.id,
            key.name,
            key.prefix + "...",
            key.scope,
            ",".join(key.models) or "all",
            limits or "-",
            key.state,
            expires,
        )
    console.print(table)


@app.command()
def revoke(id_or_name: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke a key: requests with it get 401 within two seconds."""
    try:
        info = _store().revoke(id_or_name)
    except CorralError as exc:
        raise _fail(exc.message) from None
    console.print(f"revoked {info.name} ({info.id})")
