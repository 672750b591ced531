"""``corral serve``: prepare the data directory, then run the gateway under uvicorn."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys

import uvicorn

from corral.api.app import create_app
from corral.cli.connections import protocol_with_header_timeout
from corral.engines.catalog import Catalog
from corral.registry.demo import ensure_demo_model
from corral.settings import Settings, env_name

log = logging.getLogger("corral")


class ServeRefused(Exception):
    """The server must not start as configured; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond this machine while there are no API keys to check.

    With no key, anyone who reaches the port could run, pull, import and delete
    models, so binding a non-loopback address (``0.0.0.0``, a LAN address) needs a
    key to exist (``corral keys create``), or an explicit ``--insecure``.
    """
    if is_loopback(settings.host) or settings.insecure or keys_exist(settings):
        return
    raise ServeRefused(
        f"Refusing to listen on {settings.host}: this server has no API keys, so anyone who "
        f"can reach port {settings.port} could use, pull, import and delete models. Create "
        "one first (`corral keys create --name me --scope admin`), listen on 127.0.0.1 "
        "(the default), or pass --insecure (CORRAL_INSECURE=1) to accept that."
    )


def keys_exist(settings: Settings) -> bool:
    """Whether the registry has a live API key, read without creating anything: a
    home with no registry has none."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    if settings.database_url:
        url = settings.database_url
    else:
        path = settings.home / "registry.db"
        if not path.exists():
            return False
        url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = text("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")
            return bool(connection.execute(query).scalar())
    except SQLAlchemyError:  # no such table yet: a registry from before keys
        return False
    finally:
        engine.dispose()


def bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything else happens.

    A second server on a port in use used to create its data directory, registry and
    demo model, and log "listening", before uvicorn failed to bind: now it stops first,
    saying what to do.
    """
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeRefused(f"Cannot listen on {settings.host}: {exc.strerror}.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeRefused(
                f"Port {settings.port} on {settings.host} is already in use: is Corral already "
                f"running (`corral ps`)? Stop it, or choose another port with --port or "
                f"{env_name('port')}."
            ) from None
        raise ServeRefused(
            f"Cannot listen on {settings.host}:{settings.port}: {exc.strerror}."
        ) from None
    return sock


_CHATTY = ("httpx", "alembic", "sqlalchemy", "huggingface_hub", "filelock")


class _Server(uvicorn.Server):
    """uvicorn's server, logging the addresses it actually bound (port 0 included)."""

    keys_exist = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                log.info("Corral listening on http://%s:%s", shown, port)
        if not is_loopback(self.config.host) and not self.keys_exist:
            log.warning(
                "listening on %s without API keys (--insecure): anyone who can reach it "
                "can use and manage this server",
                self.config.host,
            )


def run_server(
    settings: Settings, catalog: Catalog | None = None, sock: socket.socket | None = None
) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Libraries' INFO is noise here (httpx logs every worker call, alembic 7 plugin lines
    # at each start); it shows with --log-level debug.
    if settings.log_level.lower() != "debug":
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.demo_model and ensure_demo_model(settings.home):
        log.info("no models installed: created the demo model 'demo' (random weights)")
    config = uvicorn.Config(
        create_app(settings, catalog),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        http=protocol_with_header_timeout(settings.header_timeout),
        limit_concurrency=settings.max_connections,
    )
    log.info("models in %s", settings.home)
    server = _Server(config)
    server.keys_exist = not is_loopback(settings.host) and keys_exist(settings)
    server.run(sockets=[sock] if sock is not None else None)
