"""Who is calling: the API key of each request, checked against the route's access.

Until the first key exists, nothing is asked (the server listens on loopback only;
``corral serve`` refuses other addresses without a key). From then on every route but
the public ones (liveness, version, docs) needs a key, sent the way each API's clients
send one: ``Authorization: Bearer <key>`` (OpenAI, Ollama) or ``x-api-key`` (Anthropic).
Admin routes need an admin key. The key, as a ``Principal``, is left in the request's
state for what follows: the model allow-list, limits, and who owns a file or batch.

Refusals come before the route, in the shape of the API the path belongs to: 401 for a
missing, unknown, revoked or expired key, 403 for a key whose scope is too narrow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.guard import refusal
from corral.api.spec import Access, matched_route
from corral.errors import AuthenticationRequired, CorralError, ModelNotFound, PermissionDenied
from corral.keys.store import KeyStore, Principal
from corral.registry.records import ModelRecord

STATE_KEY = "principal"
UI_COOKIE = "corral_admin"  # the dashboard's admin key (see ui_key)
UI_HEADER = "x-corral-ui"


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        try:
            principal = self._check(scope, services.keys, services.settings.metrics_need_key)
        except CorralError as error:
            await refusal(scope["path"], error)(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, keys: KeyStore, metrics_need_key: bool) -> Principal | None:
        access = _access(scope)
        if access == "metrics":
            access = "admin" if metrics_need_key else "public"
        if access == "public":
            return None
        principal = key_holder(keys, api_key_of(scope))
        if principal is None:
            return None
        if access == "admin" and not principal.admin:
            raise PermissionDenied(
                f"The API key '{principal.name}' has the inference scope; "
                f"{scope['method']} {scope['path']} needs an admin key."
            )
        return principal


def key_holder(keys: KeyStore, secret: str) -> Principal | None:
    """Whose key ``secret`` is: None while no key exists (the loopback-only server of
    before), else the key's Principal, or a 401 for a missing, unknown, revoked or
    expired key. HTTP and gRPC calls are both checked here."""
    if not keys.any():
        return None
    if not secret:
        raise AuthenticationRequired(
            "This server needs an API key: send it as 'Authorization: Bearer <key>' "
            "(or 'x-api-key: <key>'). `corral keys create` makes one."
        )
    return keys.authenticate(secret)


def _access(scope: Scope) -> Access:
    """The access the route at this method and path declares; unmatched paths (404s,
    405s) and the docs are public."""
    route = matched_route(scope)
    return route.operation.access if route is not None else "public"


def api_key_of(scope: Scope) -> str:
    """The API key a request carries, as each API's clients send it: ``Authorization:
    Bearer`` (OpenAI, Ollama) or ``x-api-key`` (Anthropic); else the dashboard's cookie
    (``UI_COOKIE``); "" if none."""
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"authorization", b"x-api-key", b"cookie", UI_HEADER.encode())
    }
    return key_in(headers) or ui_key(headers, scope["method"])


def ui_key(headers: Mapping[str, str], method: str) -> str:
    """The admin key the dashboard keeps in its cookie (HttpOnly, SameSite=Strict: never
    sent from another site's page). A change (POST, DELETE, ...) also needs the
    dashboard's own header, which no other site's page can add without a CORS
    preflight this server refuses: the second lock against request forgery."""
    if method not in ("GET", "HEAD") and UI_HEADER not in headers:
        return ""
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return ""
    morsel = jar.get(UI_COOKIE)
    return morsel.value if morsel is not None else ""


def key_in(headers: Mapping[str, str]) -> str:
    """The key in lower-cased headers (or gRPC metadata): ``authorization: Bearer
    <key>`` first, else ``x-api-key``; "" if none."""
    text = headers.get("authorization", "").strip()
    bearer = text[7:].strip() if text[:7].lower() == "bearer " else ""
    return bearer or headers.get("x-api-key", "").strip()


def principal_of(state: object) -> Principal | None:
    """The key a request was made with (None: no keys exist, or a public route)."""
    value = getattr(state, STATE_KEY, None)
    return value if isinstance(value, Principal) else None


def usable(state: object, records: Iterable[ModelRecord]) -> list[ModelRecord]:
    """The models the request's key may use, of ``records`` (model lists show only these)."""
    principal = principal_of(state)
    return [r for r in records if principal is None or principal.may_use(r.name)]


def require_usable(state: object, record: ModelRecord) -> ModelRecord:
    """``record``, or the 404 of a model that does not exist if the key may not use it."""
    principal = principal_of(state)
    if principal is not None and not principal.may_use(record.name):
        raise ModelNotFound(record.name)
    return record
