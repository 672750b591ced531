"""Which replica has a request's KV cache: a hash of how the request begins.

A model with ``replicas: N`` keeps a KV cache per worker; llama.cpp and vLLM reuse
the cached prefix of a prompt that begins like an earlier one. Every turn of one
conversation begins with the same system prompt and first user message, so those
(or a completion prompt's first characters) pick the replica a request prefers;
the scheduler goes elsewhere only when that replica is much busier
(``scheduler.core.AFFINITY``). Parsed only for models with replicas.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PREFIX_CHARS = 1024  # of a completion prompt: the part a follow-up shares


def affinity_of(body: bytes) -> int | None:
    """A stable 64-bit hash of the request's opening, or None if it has none (an
    embeddings or tensor request: no KV cache to find again)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    messages = data.get("messages")
    opening: Any
    if isinstance(messages, list) and messages:
        head = []
        for message in messages:
            head.append(message)
            if isinstance(message, dict) and message.get("role") == "user":
                break
        opening = [data.get("system"), head]  # Anthropic's system prompt is apart
    elif isinstance(data.get("prompt"), str):
        opening = data["prompt"][:PREFIX_CHARS]
    else:
        return None
    text = json.dumps(opening, sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
