"""Traffic a test makes through the official ``openai`` client."""

from __future__ import annotations

import openai


def stream_chat(client: openai.OpenAI, model: str, max_tokens: int) -> None:
    """One streamed chat request read to its end, usage included (what the metrics
    and the dashboard's charts count)."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for _chunk in stream:
        pass
