"""Signing in to the dashboard with an admin key, kept in an HttpOnly, SameSite=Strict
cookie (no script can read it, no other site's page sends it); changes also need the
dashboard's own header (see ``auth.ui_key``). With no key, the dashboard is open, as
the API is."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from corral.api.auth import UI_COOKIE
from corral.api.services import services_of
from corral.api.ui.render import PREFIX, render
from corral.errors import CorralError

COOKIE_SECONDS = 12 * 3600


async def login_form(request: Request) -> Response:
    if not services_of(request).keys.any():
        return RedirectResponse(f"{PREFIX}/models", status_code=303)
    return render("login.html", error=None)


async def login(request: Request) -> Response:
    form = await request.form()
    secret = str(form.get("key", "")).strip()
    keys = services_of(request).keys
    error = None
    try:
        principal = keys.authenticate(secret) if secret else None
    except CorralError as exc:
        principal, error = None, exc.message
    if principal is None or not principal.admin:
        if principal is not None:
            error = f"The key '{principal.name}' has the inference scope; an admin key is needed."
        # The form again, with why (a page, not an API answer: 200, as sign-in pages do).
        return render("login.html", error=error or "Enter an admin API key.")
    response = RedirectResponse(f"{PREFIX}/models", status_code=303)
    response.set_cookie(
        UI_COOKIE,
        secret,
        max_age=COOKIE_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(UI_COOKIE, path="/", httponly=True, samesite="strict")
    return response
