"""``GET /admin/logs``: the request log, filtered, and followed with ``after``."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from corral.api.requests import page_limit
from corral.api.services import services_of
from corral.api.spec import ADMIN, route
from corral.errors import InvalidRequest
from corral.httputil import json_response
from corral.service.request_log import LogQuery, row_object
from corral.units import parse_keep_alive

_QUERY = {
    "model": "Only this model (its canonical name, e.g. llama3:latest).",
    "key": "Only this key id.",
    "since": "Only requests newer than this: a duration back from now (1h, 30m).",
    "status": "Only this class: 2xx, 4xx or 5xx.",
    "after": "Only rows after this id (to follow the log).",
    "limit": "Most rows (1-1000, default 100).",
}


async def logs(request: Request) -> Response:
    params = request.query_params
    since = None
    if params.get("since"):
        try:
            back = parse_keep_alive(params["since"])
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="since") from None
        since = None if back is None else time.time() - back
    status_class = None
    if params.get("status"):
        status = params["status"].lower()
        if status not in ("2xx", "4xx", "5xx"):
            raise InvalidRequest("status must be 2xx, 4xx or 5xx.", param="status")
        status_class = int(status[0])
    try:
        after = int(params.get("after", "0"))
    except ValueError:
        raise InvalidRequest("after must be a row id.", param="after") from None
    query = LogQuery(
        model=params.get("model"),
        key_id=params.get("key"),
        since=since,
        status_class=status_class,
        after_id=max(0, after),
        limit=page_limit(request, default=100, most=1000),
    )
    services = services_of(request)
    await asyncio.to_thread(services.request_log.flush)  # what just happened, too
    rows = await asyncio.to_thread(services.request_log.query, query)
    return json_response({"object": "list", "data": [row_object(r) for r in rows]})


routes = [route("GET", "/admin/logs", logs, "The request log", tag=ADMIN, query=_QUERY)]
