"""What a failed pull tells its user when the network is the problem.

A pull that cannot reach its host used to end with ``ConnectError: [Errno -2] Name or
service not known`` and 77 lines of traceback in the server's log. A network failure
is expected, not a bug: it gets one line that names the host that could not be
reached, why, and what to do (``HF_ENDPOINT``, working offline).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

# httpx's transport errors (and the copies other libraries vendor) share these names.
_TRANSPORT_CLASSES = frozenset({"TransportError", "ConnectionError", "Timeout"})


def network_failure(exc: BaseException) -> str | None:
    """A one-line explanation if ``exc`` came from the network, else None."""
    chain = _chain(exc)
    transport = next((e for e in chain if _is_transport(e)), None)
    if transport is None:
        return None
    host = next((h for e in chain if (h := _host(e))), None) or _hub_host()
    reason = _reason(chain)
    return (
        f"Could not reach {host}: {reason}. Check the network connection. Pulls from the "
        "Hugging Face Hub go to HF_ENDPOINT (default https://huggingface.co; set it to a "
        "mirror if that host is blocked). Offline, install a local file with "
        "`corral import PATH`."
    )


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _is_transport(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    return any(k.__name__ in _TRANSPORT_CLASSES for k in type(exc).__mro__)


def _host(exc: BaseException) -> str | None:
    try:
        url = exc.request.url  # type: ignore[attr-defined]
    except Exception:  # no request attached (or an httpx that raises for its absence)
        return None
    port = f":{url.port}" if getattr(url, "port", None) else ""
    return f"{url.host}{port}" if getattr(url, "host", None) else None


def _hub_host() -> str:
    return urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").netloc


def _reason(chain: list[BaseException]) -> str:
    """The innermost cause, in words: "Name or service not known", "Connection refused"."""
    for exc in reversed(chain):
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
    text = str(chain[0]).strip()
    return text or type(chain[0]).__name__
