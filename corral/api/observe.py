"""Every HTTP request, counted and logged once it is answered (streams: once they end).

The outermost middleware: it sees refusals by the guard and by key checks as well as
answers. It leaves a ``Trace`` in the request's state, which the inference service
fills in (model, tokens, time to first token), then records the request in the
HTTP metrics and, unless it is a probe (``/health``, ``/ready``, ``/metrics``, the
docs), in the request log with the key that made it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.auth import STATE_KEY
from corral.api.spec import matched_route
from corral.keys.store import SECRET_PREFIX, Principal
from corral.service.inference import Trace
from corral.service.request_log import MAX_PROMPT_BYTES, RequestLogRow

if TYPE_CHECKING:
    from corral.api.services import Services

_SECRET = re.compile(re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_\-]+")
NOT_LOGGED = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/docs"})


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        trace = Trace()
        state = scope.setdefault("state", {})
        state["trace"] = trace
        arrived, started = time.time(), time.perf_counter()
        status = 500  # if the app fails before answering
        body = bytearray()
        answer = bytearray()
        logging_prompts = services.settings.log_prompts

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.body":
                if logging_prompts and len(answer) < MAX_PROMPT_BYTES:
                    answer.extend(message.get("body", b"")[: MAX_PROMPT_BYTES - len(answer)])
            elif message["type"] == "http.response.start":
                status = message["status"]
                if trace.rate_headers:  # the key's limits, as OpenAI reports them
                    MutableHeaders(scope=message).update(trace.rate_headers)
            await send(message)

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_PROMPT_BYTES:
                body.extend(message.get("body", b"")[: MAX_PROMPT_BYTES - len(body)])
            return message

        try:
            await self.app(scope, receiving if logging_prompts else receive, sending)
        finally:
            seconds = time.perf_counter() - started
            matched = matched_route(scope)
            template = matched.path_format if matched is not None else "(unmatched)"
            services.metrics.observe_http(scope["method"], template, status, seconds)
            path: str = scope["path"]
            if template not in NOT_LOGGED and not path.startswith("/docs"):
                principal = state.get(STATE_KEY)
                client = scope.get("client")
                services.request_log.add(
                    RequestLogRow(
                        at=arrived,
                        key_id=principal.key_id if isinstance(principal, Principal) else None,
                        method=scope["method"],
                        route=template,
                        model=trace.model,
                        status=status,
                        prompt_tokens=trace.prompt_tokens,
                        completion_tokens=trace.completion_tokens,
                        ttft_ms=None if trace.ttft_ns is None else trace.ttft_ns / 1e6,
                        duration_ms=seconds * 1000,
                        client=client[0] if client else None,
                        user=trace.user,
                        metadata_=trace.metadata,
                        prompt=_logged(body) if logging_prompts else None,
                        output=_logged(answer) if logging_prompts else None,
                    )
                )


def _logged(data: bytearray) -> str | None:
    """A body as the request log keeps it: text, with any API key's secret cut out (a
    key's creation answers with it)."""
    if not data:
        return None
    return _SECRET.sub(SECRET_PREFIX + "[redacted]", data.decode("utf-8", "replace"))
