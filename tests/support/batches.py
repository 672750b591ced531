"""Helpers for Batch API tests: input lines, uploads, and waiting for a batch to end."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai

ENDED = ("completed", "failed", "expired", "cancelled")


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(i: int, model: str, **body: Any) -> dict[str, Any]:
    """Batch input line ``req-{i}``: a chat request to ``model`` (4 tokens unless ``body``
    says otherwise)."""
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"Say {i}"}],
            "max_tokens": 4,
            "temperature": 0,
            **body,
        },
    }


def submit(
    client: openai.OpenAI,
    lines: list[dict[str, Any]],
    endpoint: str = "/v1/chat/completions",
    window: str = "24h",
) -> Any:
    """Upload ``lines`` and start a batch on them; the new batch."""
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,
        completion_window=window,
    )


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ENDED:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def completed_count(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts is not None else 0


def output_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The records of a batch's output (or error) file."""
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
