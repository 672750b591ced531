"""Anthropic's Messages API through the real server, with the official ``anthropic`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import jsonschema
import pytest

from tests.support.server import CorralServer

MODEL = "test-chat"
GREEDY = {"temperature": 0, "top_k": 1}  # samplers the API dropped: extensions here
HI = [{"role": "user", "content": "Say hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    },
}


@pytest.fixture
def client(server: CorralServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0) as c:
        yield c


def test_a_message_and_its_stream_agree(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(
        model=MODEL, max_tokens=24, messages=HI, system="Be brief.", extra_body=GREEDY
    )
    assert whole.type == "message" and whole.role == "assistant" and whole.model == MODEL
    assert whole.id.startswith("msg_")
    assert [block.type for block in whole.content] == ["text"]
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.usage.output_tokens > 0
    assert whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0) > 5
    with client.messages.stream(
        model=MODEL,
        max_tokens=24,
        messages=HI,
        system=[{"type": "text", "text": "Be brief."}],
        extra_body=GREEDY,
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole.content[0].text  # type: ignore[union-attr]
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequences_name_the_one_that_stopped(client: anthropic.Anthropic) -> None:
    free = client.messages.create(model=MODEL, max_tokens=40, messages=HI, extra_body=GREEDY)
    text = free.content[0].text  # type: ignore[union-attr]
    stop = text[10:13]
    assert len(stop) == 3
    cut = client.messages.create(
        model=MODEL, max_tokens=40, messages=HI, stop_sequences=[stop], extra_body=GREEDY
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]  # type: ignore[union-attr]


def test_a_required_tool_call_and_its_result(client: anthropic.Anthropic) -> None:
    for temperature in (0.5, 1.0):
        reply = client.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "any"},
            extra_body={"temperature": temperature},  # dropped from the API, still taken
        )
        assert reply.stop_reason == "tool_use"
        call = reply.content[-1]
        assert call.type == "tool_use" and call.name == "get_weather"
        jsonschema.validate(call.input, WEATHER["input_schema"])
    answered = client.messages.create(
        model=MODEL,
        max_tokens=10,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [c.model_dump() for c in reply.content]},  # type: ignore[misc]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    )
    assert answered.type == "message" and answered.usage.output_tokens > 0


def test_a_streamed_tool_call_arrives_whole(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and "content_block_start" in events
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER["input_schema"])


def test_output_config_holds_the_reply_to_a_schema(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"mood": {"enum": ["calm", "busy"]}, "n": {"type": "integer"}},
        "required": ["mood", "n"],
    }
    for _ in range(3):
        reply = client.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=HI,
            output_config={"format": {"type": "json_schema", "schema": schema}},
            thinking={"type": "adaptive"},  # the model may choose not to think: it cannot
        )
        assert reply.stop_reason == "end_turn"
        jsonschema.validate(json.loads(reply.content[0].text), schema)  # type: ignore[union-attr]


def test_errors_come_in_anthropics_shape(client: anthropic.Anthropic, server: CorralServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as image:
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        }
                    ],
                }
            ],
        )
    assert image.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        client.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 20},
        )
    for body in (
        b"{not json",
        json.dumps({"model": MODEL, "messages": HI}).encode(),  # no max_tokens
        json.dumps({"model": MODEL, "max_tokens": 5, "messages": []}).encode(),
        json.dumps(
            {"model": MODEL, "max_tokens": 5, "messages": HI, "stop_sequences": ["x"] * 17}
        ).encode(),
    ):
        bad = httpx.post(
            server.url + "/v1/messages",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert bad.status_code == 400, bad.text
        assert bad.json()["type"] == "error"
        assert bad.json()["error"]["type"] == "invalid_request_error"
