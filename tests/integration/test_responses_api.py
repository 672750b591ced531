"""OpenAI's Responses API through the real server, with the official ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest

from tests.support.server import CorralServer

MODEL = "test-chat"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    },
}


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as c:
        yield c


def test_text_in_text_out_and_the_stream_agrees(client: openai.OpenAI) -> None:
    whole = client.responses.create(
        model=MODEL, input="Say hi", instructions="Be brief.", max_output_tokens=20, temperature=0
    )
    assert whole.object == "response" and whole.id.startswith("resp_")
    assert whole.output_text and whole.output[0].type == "message"
    assert whole.usage is not None and whole.usage.output_tokens > 0
    if whole.status == "incomplete":
        assert whole.incomplete_details is not None
        assert whole.incomplete_details.reason == "max_output_tokens"
    with client.responses.stream(
        model=MODEL, input="Say hi", instructions="Be brief.", max_output_tokens=20, temperature=0
    ) as stream:
        events = list(stream)
    # A reply cut short ends with response.incomplete, as OpenAI's does (the SDK's
    # get_final_response() then raises, as it does against OpenAI).
    final = events[-1].response  # type: ignore[union-attr]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text == final.output_text
    assert final.status == whole.status
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_json_schema_text_format_holds(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    for temperature in (0.7, 1.0):
        r = client.responses.create(
            model=MODEL,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "JSON please"}]}],
            text={"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}},
            max_output_tokens=200,
            temperature=temperature,
        )
        assert r.status == "completed"
        jsonschema.validate(json.loads(r.output_text), schema)


def test_function_call_round_trip_and_streamed_arguments(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=200,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])  # type: ignore[arg-type]
    second = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=10,
    )
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]
    with client.responses.stream(
        model=MODEL,
        input="Weather in Oslo?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    call = next(item for item in final.output if item.type == "function_call")
    assert "".join(pieces) == call.arguments
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # type: ignore[arg-type]


def test_what_is_not_served_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")
    with pytest.raises(openai.BadRequestError) as image:
        client.responses.create(
            model=MODEL,
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://example.com/x.png"}],
                }
            ],
        )
    assert image.value.body["param"] == "input[0].content[0]"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
