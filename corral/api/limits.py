"""Bounds on what one request may cost before a route sees it: body size and pace.

A 100 MB prompt once took 45 s and 6.7 GB of worker memory before it was refused, and
clients that stopped sending mid-body held their connections for minutes. This ASGI
middleware answers, in the shape of the API the path belongs to:

* **413** when a body is larger than ``max_body``: at once when ``Content-Length``
  says so, else as soon as the bytes received pass it. The ``/v1/files`` upload has
  its own, larger limit (``max_upload``), counted as it streams to disk; a model
  file sent to ``/admin/uploads/`` (admin only) has none but the disk.
* **408** when a body pauses longer than ``body_timeout`` between two chunks.

Both close the connection (``Connection: close``): the rest of the body is never read.
Headers that never finish are uvicorn's to time out (``corral.cli.serve``).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.guard import MODEL_UPLOAD_PREFIX, UPLOAD_PATH, refusal
from corral.errors import RequestTimeout, RequestTooLarge
from corral.settings import Settings


class BodyLimits:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        upload = scope["method"] == "POST" and path == UPLOAD_PATH
        # A model file (admin only) is as large as the model; the disk is its limit.
        model_upload = scope["method"] == "PUT" and path.startswith(MODEL_UPLOAD_PREFIX)
        limit = None if upload or model_upload else self.max_body
        declared = _content_length(scope)
        if limit is not None and declared is not None and declared > limit:
            await refusal(path, self._too_large(limit))(scope, receive, send)
            return
        await self.app(scope, self._paced(receive, limit), send)

    def _too_large(self, limit: int) -> RequestTooLarge:
        return RequestTooLarge(
            f"The request body is larger than this server's limit of {limit:,} bytes "
            "(CORRAL_MAX_BODY)."
        )

    def _paced(self, receive: Receive, limit: int | None) -> Receive:
        received = 0
        complete = False

        async def paced() -> Message:
            nonlocal received, complete
            if complete:  # after the body: disconnect polling waits as long as it likes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"The request body stopped arriving for {self.body_timeout:g} s "
                    "(CORRAL_BODY_TIMEOUT)."
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise self._too_large(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return paced


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
