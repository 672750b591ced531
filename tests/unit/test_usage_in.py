"""Token usage read from a worker's body or events without decoding the rest."""

from __future__ import annotations

import json

from corral.service.worker_client import TokenUsage, usage_in


def test_a_whole_body_gives_its_usage() -> None:
    body = json.dumps(
        {"data": [{"embedding": [0.1] * 384}], "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    ).encode()
    assert usage_in(body) == TokenUsage(7, 0)


def test_the_last_event_with_usage_wins() -> None:
    events = (
        b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert usage_in(events) == TokenUsage(5, 9)


def test_a_quoted_usage_inside_content_is_not_the_key() -> None:
    body = json.dumps({"content": 'say "usage": {"prompt_tokens": 99}', "usage": None}).encode()
    assert usage_in(body) is None


def test_an_event_cut_short_falls_back_to_an_earlier_one() -> None:
    text = b'{"usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n{"usage": {"prompt_t'
    assert usage_in(text) == TokenUsage(2, 3)


def test_no_usage_or_a_strange_one() -> None:
    assert usage_in(b"") is None
    assert usage_in(b'{"usage": "many"}') is None
    assert usage_in(b'{"usage": {"prompt_tokens": "x"}}') is None
