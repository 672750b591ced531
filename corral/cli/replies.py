"""What a server's error answer says, whichever API's shape it has (OpenAI's
``{"error": {"message": ...}}``, V2's ``{"error": "..."}``), for the CLI's messages."""

from __future__ import annotations

import httpx


def error_message(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error or body)[:300]
