"""Keeps web pages the user visits away from the API: Host, Origin and Content-Type checks.

Until API keys exist, anything that can send a request to the port can use and manage
the server, and a browser will send requests on a web page's behalf. Three attacks are
closed here, in one ASGI middleware that runs before routing:

* **DNS rebinding.** A page at ``http://evil.example`` re-points its own name at
  127.0.0.1 and then reads the API as "same origin", so the browser's same-origin rules
  protect nothing. The request still carries ``Host: evil.example``, so only hosts the
  server is known by are served: IP literals (a rebinding attack needs a domain name),
  ``localhost`` and ``*.localhost`` (browsers resolve those to loopback themselves), the
  name in ``host``, and ``allowed_hosts`` (``*`` = any). The port is not compared, and a
  request without Host (HTTP/1.0) passes. Otherwise: 403 ``host_not_allowed``.

* **Cross-site request forgery.** A page may POST to any URL without a CORS preflight,
  if its Content-Type is ``text/plain``, ``multipart/form-data`` or
  ``application/x-www-form-urlencoded``; it cannot read the answer, but the copy,
  unload, reload or pull has happened. Browsers send ``Origin`` on every cross-origin
  POST, PUT, PATCH and DELETE, so on those methods an Origin must be a loopback one
  (http or https on localhost, 127.0.0.1 or [::1], any port, as Ollama allows by
  default) or in ``allowed_origins`` (``*`` = any); ``Origin: null`` (sandboxed frames,
  ``file:`` pages, redirects, ``no-referrer`` form posts) is refused. Requests without
  Origin (curl, the SDKs) are not from a browser page and pass. Otherwise: 403
  ``origin_not_allowed``. Reads are not checked: the browser withholds their answer.

* **JSON in a simple request.** The bodies are parsed as JSON whatever their declared
  type, so a ``text/plain`` body was a JSON request no browser preflights. On the same
  methods, a ``text/plain`` or ``multipart/form-data`` Content-Type is refused with 415
  ``unsupported_media_type`` (even on an empty body), except multipart on
  ``POST /v1/files``, the upload. This is the second lock, for browsers that omit
  Origin (Firefox did on form posts before version 70).
  ``application/x-www-form-urlencoded`` is accepted: it is curl's default for ``-d``,
  which Ollama's own API docs use verbatim, and a browser sending it cross-site carries
  an Origin, which the check above refuses; so does a ``fetch`` of a Blob body, the
  one way a page sends a body with no Content-Type, which is accepted for the SDKs and
  curl. Every other type (JSON, ``application/*+json``) makes a browser send a
  preflight first, which fails unless CORS allows the origin.

CORS is off unless ``allowed_origins`` is set. Then a preflight from an allowed origin
(the same ``origin_allowed`` decides both) gets 204 with the ``Access-Control-Allow-*``
headers, and answers to allowed cross-origin requests carry
``Access-Control-Allow-Origin``. Any other preflight gets 403 ``origin_not_allowed``.

Refusals are in the shape of the API the path belongs to: Ollama's ``{"error": "..."}``
for ``/`` and ``/api/...``, OpenAI's envelope elsewhere. The gateway has no WebSocket
routes; only HTTP is checked (one added later needs the Origin check: browsers do not
preflight WebSockets). The workers listen on loopback and are reached only by the
gateway, so they have no guard.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.ollama_http import error_response
from corral.errors import CorralError, HostNotAllowed, OriginNotAllowed, UnsupportedMediaType
from corral.httputil import json_response, openai_error_response
from corral.settings import Settings

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
REFUSED_TYPES = frozenset({"text/plain", "multipart/form-data"})
UPLOAD_PATH = "/v1/files"  # POST only: OpenAI's file upload is multipart
MODEL_UPLOAD_PREFIX = "/admin/uploads/"  # PUT only: a model file as the raw body
ANTHROPIC_PATH = "/v1/messages"

_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]*))(?::[0-9]*)?")
_LOOPBACK_ORIGIN = re.compile(
    r"https?://(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?", re.IGNORECASE
)


@functools.lru_cache(maxsize=64)  # a server sees few distinct Host headers
def host_name(host: str) -> str | None:
    """The name in a Host header (port and trailing dot dropped, lowercased): ``""`` for
    an IP literal, None if it is malformed."""
    match = _HOST.fullmatch(host.strip())
    if match is None:
        return None
    if match["ipv6"] is not None:
        return "" if _is_ip(match["ipv6"]) else None
    name = match["name"].lower().rstrip(".")
    if _is_ip(name):
        return ""
    return name or None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class GuardRules:
    """Which hosts and origins are allowed; built once from the settings."""

    hosts: frozenset[str]
    any_host: bool
    origins: frozenset[str]
    any_origin: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardRules:
        hosts = {host_name(entry) for entry in settings.allowed_hosts if entry != "*"}
        if not _is_ip(settings.host):  # a bind address that is a name is the server's name
            hosts.add(host_name(settings.host))
        return cls(
            hosts=frozenset(h for h in hosts if h),
            any_host="*" in settings.allowed_hosts,
            origins=frozenset(_origin_key(o) for o in settings.allowed_origins if o != "*"),
            any_origin="*" in settings.allowed_origins,
        )

    @property
    def cors(self) -> bool:
        return self.any_origin or bool(self.origins)

    def host_allowed(self, host: str | None) -> bool:
        if not host or self.any_host:
            return True
        name = host_name(host)
        if name is None:
            return False
        return name in ("", "localhost") or name.endswith(".localhost") or name in self.hosts

    def origin_allowed(self, origin: str) -> bool:
        """The one place that decides whether a web origin may use the API."""
        if origin == "null":
            return False
        return (
            self.any_origin
            or _LOOPBACK_ORIGIN.fullmatch(origin) is not None
            or _origin_key(origin) in self.origins
        )


def same_origin(origin: str, host: str | None) -> bool:
    """A page of this very server (the dashboard at /ui), on whatever address it is
    served: its Origin names the Host it was loaded from, which was checked above."""
    if not host:
        return False
    scheme, _, rest = origin.partition("://")
    return scheme in ("http", "https") and rest.rstrip("/").lower() == host.lower()


def _origin_key(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def media_type(content_type: str) -> str:
    """``text/plain`` of ``Text/Plain; charset=utf-8``."""
    return content_type.partition(";")[0].strip().lower()


class Guard:
    """ASGI middleware applying the Host, Origin and Content-Type rules, and CORS."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.rules = GuardRules.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host: str | None = None
        origin: str | None = None
        content_type: str | None = None
        request_method: str | None = None
        request_headers: str | None = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"access-control-request-method":
                request_method = value.decode("latin-1")
            elif key == b"access-control-request-headers":
                request_headers = value.decode("latin-1")
        rules = self.rules
        method: str = scope["method"]
        path: str = scope["path"]

        error: CorralError | None = None
        if not rules.host_allowed(host):
            error = HostNotAllowed(
                f"Host {host!r} is not allowed (DNS rebinding protection); to serve it, add "
                f"{host_name(host or '') or 'its name'} to CORRAL_ALLOWED_HOSTS "
                "(comma-separated; * = any)."
            )
        elif (
            origin is not None
            and not rules.origin_allowed(origin)
            and not same_origin(origin, host)
        ):
            if method in UNSAFE_METHODS or (method == "OPTIONS" and request_method):
                error = OriginNotAllowed(
                    f"Requests from the web origin {origin!r} are not allowed; to allow "
                    "them, add it to CORRAL_ALLOWED_ORIGINS (comma-separated; * = any)."
                )
        elif origin is not None and method == "OPTIONS" and request_method:
            if rules.cors:
                await _preflight(origin, request_headers)(scope, receive, send)
                return
            error = OriginNotAllowed(
                f"CORS is off: browser pages (here {origin!r}) cannot call the API from "
                "another origin; to allow one, add it to CORRAL_ALLOWED_ORIGINS."
            )
        if error is None and method in UNSAFE_METHODS and content_type is not None:
            kind = media_type(content_type)
            if kind in REFUSED_TYPES and not (
                kind == "multipart/form-data" and method == "POST" and path == UPLOAD_PATH
            ):
                error = UnsupportedMediaType(
                    f"Content-Type {kind} is not accepted; send the body as application/json."
                )

        if origin is not None and rules.cors and rules.origin_allowed(origin):
            send = _with_cors(send, origin)
        if error is not None:
            await refusal(path, error)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def refusal(path: str, error: CorralError) -> Response:
    """``error`` in the shape of the API ``path`` belongs to, for a request refused
    before it reaches a route."""
    if path == "/" or path.startswith("/api/"):
        return error_response(error)
    if path == "/v2" or path.startswith(("/v2/models/", "/v2/health/")):
        return json_response({"error": error.message}, status=error.status, headers=error.headers)
    if path == ANTHROPIC_PATH:
        return json_response(error.to_anthropic(), status=error.status, headers=error.headers)
    return openai_error_response(error)


def _preflight(origin: str, request_headers: str | None) -> Response:
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }
    if request_headers:
        headers["Access-Control-Allow-Headers"] = request_headers
    return Response(status_code=204, headers=headers)


def _with_cors(send: Send, origin: str) -> Send:
    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["Access-Control-Allow-Origin"] = origin
            headers.add_vary_header("Origin")
        await send(message)

    return send_with_cors
