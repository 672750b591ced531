"""Anthropic Messages <-> OpenAI chat completions, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import InvalidRequest, UnsupportedCapability
from corral.protocol import anthropic_openai as t
from corral.protocol.anthropic import MessagesRequest
from corral.protocol.parse import validate


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    return validate({**body, **fields}, MessagesRequest)


def test_a_conversation_with_a_tool_round_trip() -> None:
    body = t.chat_request(
        request(
            system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            messages=[
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "x"},
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "tu1", "name": "w", "input": {"c": "P"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Thanks."},
                        {
                            "type": "tool_result",
                            "tool_use_id": "tu1",
                            "content": [{"type": "text", "text": "sun"}],
                            "is_error": True,
                        },
                    ],
                },
            ],
            tools=[{"name": "w", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
        )
    )
    assert body["messages"] == [
        {"role": "system", "content": "One.\n\nTwo."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "tu1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c": "P"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tu1", "content": "Error: sun"},  # results first
        {"role": "user", "content": "Thanks."},
    ]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"] and body["max_tokens"] == 10 and body["stream"] is False


def test_tool_choices() -> None:
    named = t.chat_request(request(tool_choice={"type": "tool", "name": "w"}))
    assert named["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert t.chat_request(request(tool_choice={"type": "none"}))["tool_choice"] == "none"
    with pytest.raises(InvalidRequest):
        t.chat_request(request(tool_choice={"type": "tool"}))


def test_refusals_name_the_field() -> None:
    with pytest.raises(UnsupportedCapability) as info:
        t.chat_request(
            request(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}])
        )
    assert info.value.param == "messages[0].content[0]"
    with pytest.raises(InvalidRequest) as info:
        t.chat_request(
            request(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}],
                    }
                ]
            )
        )
    assert "assistant" in info.value.message
    with pytest.raises(UnsupportedCapability):
        t.chat_request(request(thinking={"type": "enabled", "budget_tokens": 1024}))
    t.chat_request(request(thinking={"type": "adaptive"}))


def test_a_whole_answer_in_anthropics_terms() -> None:
    answer = {
        "choices": [
            {
                "message": {
                    "content": "Hi",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "w", "arguments": '{"a": 1}'}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 20},
        },
    }
    message = t.message_response(answer, "m")
    assert message["content"] == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "c1", "name": "w", "input": {"a": 1}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
    }
    assert t.stop_reason({"finish_reason": "stop", "stop_reason": "END"}) == (
        "stop_sequence",
        "END",
    )
    assert t.stop_reason({"finish_reason": "stop"}) == ("end_turn", None)
    assert t.stop_reason({"finish_reason": "length"}) == ("max_tokens", None)


def test_a_stream_of_text_then_a_call() -> None:
    s = t.StreamTranslator("m")
    names = [name for name, _ in s.start()]
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c", "function": {"name": "w", "arguments": ""}}
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    events = [event for chunk in chunks for event in s.feed(chunk)] + s.finish()
    names += [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [data["index"] for name, data in events if name == "content_block_start"] == [0, 1]
    delta = dict(events)["message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 4
