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

    Anyone who reaches the port could run, pull, import and delete models, so binding
    a non-loopback address (``0.0.0.0``, a LAN address) needs an explicit
    ``--insecure`` until keys exist.
    """
    if is_loopback(settings.host) or settings.insecure:
        return
    raise ServeRefused(
        f"Refusing to listen on {settings.host}: Corral has no API keys yet, so anyone who "
        f"can reach port {settings.port} could use, pull, import and delete models. Listen on "
        "127.0.0.1 (the default), or pass --insecure (CORRAL_INSECURE=1) to accept that."
    )


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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                log.info("Corral listening on http://%s:%s", shown, port)
        if not is_loopback(self.config.host):
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
    _Server(config).run(sockets=[sock] if sock is not None else None)
