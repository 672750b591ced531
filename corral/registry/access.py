"""What a caller may make the server read: files on its disk, addresses on its network.

Without these rules anyone who can reach the API could have the server copy, hash
and list any file its user can read (an import of the home directory copied 272,246
files), and use pulls to probe the local network, the error telling which ports are
open (issue 16).

- Local paths: a model the API imports or pulls from this machine's disk must really
  be inside one of the import directories (``CORRAL_IMPORT_DIRS``, empty by default),
  links resolved, and so must every file of a model directory. Resolving the path is
  the only disk access before the check. ``import_dirs=None`` means no limit: the CLI
  without a server, working on its own user's files, and the registry's Python API.
- Network addresses: a URL pull, and each redirect it follows, may not connect to a
  loopback, private, link-local, multicast, reserved or unspecified address unless
  ``CORRAL_ALLOW_PRIVATE_PULLS`` is set or the host is the Hub endpoint's
  (``HF_ENDPOINT``). The host is resolved once per request, every address checked
  before anything connects, and the connection made to the addresses checked, so a
  name cannot answer one address to the check and another to the connection. The
  refusal says the same whatever listens there, and a failed request to a private
  address says only that it failed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from corral.errors import LocalPathRefused, PrivateAddressRefused

ImportDirs = Sequence[str | Path] | None  # None: any path (the CLI's own imports)
_PINNED = "corral.pinned"  # request extension: (host, port, checked addresses)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# --- local paths ------------------------------------------------------------------------


def allowed_path(
    path: Path, import_dirs: Sequence[str | Path], *, given: str | None = None
) -> Path:
    """``path`` with its links resolved, if that lies inside one of ``import_dirs``;
    else ``LocalPathRefused``, the same whether the path exists or not. ``given`` is
    the path as the caller spelled it, for the message (never the resolved one: that
    would tell where links point)."""
    real = Path(os.path.realpath(path.expanduser()))
    for directory in import_dirs:
        if real.is_relative_to(os.path.realpath(Path(directory).expanduser())):
            return real
    raise LocalPathRefused(
        f"The server does not read {given or str(path)!r} from its disk for API callers: "
        "it is not inside a directory listed in CORRAL_IMPORT_DIRS (a server setting, "
        "empty by default). `corral import` and `corral pull` run without a server are "
        "not limited."
    )


def directory_files(directory: Path, import_dirs: ImportDirs = None) -> dict[str, Path]:
    """A model directory's files by their path inside it, sorted, each file whose
    name starts with a dot left out; linked directories are not entered. With
    ``import_dirs``, a link that leads outside them is refused before anything is
    read, and each file is given by its real path (what to open)."""
    found: list[tuple[Path, Path]] = []  # (entry, path to read)
    pending = [directory]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                if entry.name.startswith("."):
                    continue
                if import_dirs is not None and entry.is_symlink():
                    path = allowed_path(path, import_dirs)
                if path.is_file():
                    found.append((Path(entry.path), path))
    return {entry.relative_to(directory).as_posix(): path for entry, path in sorted(found)}


# --- network addresses ------------------------------------------------------------------


def non_public(address: str) -> bool:
    """Whether an IP address is loopback, private (RFC 1918, fc00::/7), link-local,
    multicast, reserved, unspecified or otherwise not globally routable, including an
    IPv4 address inside an IPv6 one (mapped, 6to4, NAT64)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            candidates.append(ip.sixtofour)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return any(
        c.is_loopback
        or c.is_private
        or c.is_link_local
        or c.is_multicast
        or c.is_reserved
        or c.is_unspecified
        or not c.is_global
        for c in candidates
    )


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Refuse ``host`` if any address it resolved to is not public; the message names
    the host only (not its addresses, not the port): the same for an open port and a
    closed one."""
    if any(non_public(address) for address in addresses):
        raise PrivateAddressRefused(
            f"Pulling from {host} is refused: it is on this machine or a private network "
            "(a loopback, private, link-local or other non-public address). Set "
            "CORRAL_ALLOW_PRIVATE_PULLS=1 on the server to allow pulls from there."
        )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (one ``getaddrinfo``), in its order. A
    failure is a connection error, as the connection would have met (pulls retry it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise httpx.ConnectError(f"cannot resolve {host}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def hub_hosts() -> frozenset[str]:
    """The host of the Hub endpoint (``HF_ENDPOINT``, else huggingface.co)."""
    from huggingface_hub import constants

    host = urlsplit(constants.ENDPOINT).hostname
    return frozenset({host.lower()} if host else ())


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def failure_detail(url: str, exc: Exception) -> str:
    """Why a request failed, as a message may say it: for a host on a private
    address only that it failed, since "connection refused" against a timeout or a
    dropped connection tells which ports are open."""
    target = httpx.URL(url)
    if isinstance(exc, httpx.RequestError):
        with contextlib.suppress(RuntimeError):  # no request attached
            target = exc.request.url  # the hop that failed, after redirects
    try:
        addresses = resolve_host(target.host, _port(target))
    except httpx.ConnectError:
        return str(exc) or type(exc).__name__
    if any(non_public(address) for address in addresses):
        return "the connection failed"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class PullGuard:
    """Where pulls may connect. ``trusted_hosts`` None: the Hub endpoint's host."""

    allow_private: bool = False
    trusted_hosts: frozenset[str] | None = None

    def addresses(self, host: str, port: int) -> list[str] | None:
        """The addresses a request to ``host`` may connect to, all checked; None when
        it may connect anywhere (private pulls allowed, or the Hub's host)."""
        trusted = hub_hosts() if self.trusted_hosts is None else self.trusted_hosts
        if self.allow_private or host.lower() in trusted:
            return None
        addresses = resolve_host(host, port)
        check_addresses(host, addresses)
        return addresses

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is not public, before anything connects (a host
        that does not resolve is left to the request to report)."""
        target = httpx.URL(url)
        with contextlib.suppress(httpx.ConnectError):
            self.addresses(target.host, _port(target))

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client that sends each request, redirects included, only where this
        guard allows: checked before it is sent (through a proxy too), and connected to
        the very addresses checked."""
        return httpx.Client(
            transport=_PinnedTransport(self),
            event_hooks={"request": [self._check_request]},
            **options,
        )

    def _check_request(self, request: httpx.Request) -> None:
        host, port = request.url.host, _port(request.url)
        request.extensions[_PINNED] = (host, port, self.addresses(host, port))


class _PinnedTransport(httpx.BaseTransport):
    """Connects to the addresses the guard checked for the request's host, not to a
    second resolution of the name. TLS still verifies the name (``sni_hostname``);
    one connection pool per name, so a connection is never reused for another name
    that happens to share its address."""

    def __init__(self, guard: PullGuard) -> None:
        self._guard = guard
        self._pools: dict[str, httpx.HTTPTransport] = {}

    def _pool(self, host: str) -> httpx.HTTPTransport:
        if host not in self._pools:
            self._pools[host] = httpx.HTTPTransport()
        return self._pools[host]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host, port = request.url.host, _port(request.url)
        pinned = request.extensions.get(_PINNED)
        if isinstance(pinned, tuple) and pinned[:2] == (host, port):
            addresses = pinned[2]
        else:
            addresses = self._guard.addresses(host, port)
        inner = self._pool(host)
        if addresses is None:
            return inner.handle_request(request)
        failure: httpx.TransportError | None = None
        for address in addresses:
            direct = httpx.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # Host stays the name
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return inner.handle_request(direct)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc  # try the next address, as a resolver-driven connect would
        assert failure is not None
        raise failure

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
