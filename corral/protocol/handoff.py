"""Headers the gateway adds to a request it hands to a worker.

- ``X-Corral-Request-Id``: the request's id. The worker records it when the engine
  ran the request to the end (``CORRAL_EXECUTION_LOG``, for tests and audits).
- ``X-Corral-Usage: comment``: end a stream with its token counts even when the
  client did not ask for them (see ``USAGE_HEADER``).
- ``X-Corral-Batch``: the batch a request belongs to. The worker spools the response
  under that batch before sending it, so a result the gateway never committed (it
  died in between) is picked up at restart instead of being run again.

Both sides import these names from here: the gateway's batch runner writes them,
the worker (``corral.worker.handoff``) reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

REQUEST_ID_HEADER = "x-corral-request-id"
BATCH_HEADER = "x-corral-batch"
# Streams: the gateway always needs the token counts (limits, metrics, the request log),
# whether or not the client asked for a usage chunk. With this header the worker ends
# a stream that has none with an SSE comment line, ``: usage {...}``, which the
# gateway reads and removes before the client sees it.
USAGE_HEADER = "x-corral-usage"
USAGE_COMMENT = b": usage "


def usage_comment(counts: Mapping[str, Any]) -> bytes:
    """The SSE comment event that ends a stream with its token counts, blank line
    included: ``: usage {"usage": {...}}``."""
    return USAGE_COMMENT + json.dumps({"usage": counts}, separators=(",", ":")).encode() + b"\n\n"
