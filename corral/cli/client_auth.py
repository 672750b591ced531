"""The API key the CLI sends to a server that has keys: ``CORRAL_API_KEY``.

Not a server setting (``corral serve`` has no use for it), so it is read here, once,
by every command that talks to the server.
"""

from __future__ import annotations

import os

API_KEY_ENV = "CORRAL_API_KEY"


def auth_headers() -> dict[str, str]:
    key = os.environ.get(API_KEY_ENV, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}
