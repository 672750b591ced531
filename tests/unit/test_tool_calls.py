import json

import jsonschema
import pytest

from corral.engines.structured import tool_call_schema
from corral.protocol.openai import Tool
from corral.worker import tool_calls
from corral.worker.tool_calls import (
    CallArguments,
    CallStart,
    Content,
    ForcedCall,
    PlainReply,
    ReplyEvent,
    ReplyParser,
    TaggedCalls,
    collect,
)


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream(parser: ReplyParser, parts: list[str]) -> list[ReplyEvent]:
    events: list[ReplyEvent] = []
    for part in parts:
        events += parser.feed(part)
    return events + parser.finish()


def fold(events: list[ReplyEvent]) -> tuple[str, list[tuple[str, str]]]:
    """Content and (name, arguments) per call, accumulated as OpenAI clients do."""
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: list[list[str]] = []
    for e in events:
        if isinstance(e, CallStart):
            assert e.index == len(calls) and e.id.startswith("call_")
            calls.append([e.name, ""])
        elif isinstance(e, CallArguments):
            calls[e.index][1] += e.text
    return content, [(name, args) for name, args in calls]


TAGGED = (
    'Let me check.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "time", "arguments": {}}\n</tool_call>\n'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_tagged_calls_in_any_split(size: int) -> None:
    content, calls = fold(stream(TaggedCalls(["weather", "time"]), pieces(TAGGED, size)))
    assert content == "Let me check."
    assert calls == [("weather", '{"city": "Paris"}'), ("time", "{}")]


def test_plain_text_with_tools_passes_through_and_held_tag_prefix_is_released() -> None:
    text = "  a < b and <tool_ is not a tag\n"
    content, calls = fold(stream(TaggedCalls(["f"]), pieces(text, 1)))
    assert content == "a < b and <tool_ is not a tag" and calls == []
    content, _ = fold(stream(TaggedCalls(["f"]), ["x <tool_c"]))
    assert content == "x <tool_c"


def test_unknown_tool_or_bad_json_stays_text() -> None:
    text = '<tool_call>{"name": "rm", "arguments": {}}</tool_call> <tool_call>{oops</tool_call>'
    content, calls = fold(stream(TaggedCalls(["f"]), [text]))
    assert calls == [] and content == text


def test_unclosed_block_at_the_end_is_still_a_call() -> None:
    text = '<tool_call>\n{"name": "f", "parameters": {"x": [1, 2]}}'
    assert fold(stream(TaggedCalls(["f"]), pieces(text, 4))) == ("", [("f", '{"x": [1, 2]}')])
    cut = '<tool_call>\n{"name": "f", "argu'
    assert fold(stream(TaggedCalls(["f"]), [cut])) == (cut, [])


def test_arguments_given_as_a_json_string_are_decoded() -> None:
    text = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert fold(stream(TaggedCalls(["f"]), [text]))[1] == [("f", '{"a": 1}')]


FORCED = '{ "name" : "weather", "arguments" : {"city": "Pa\\"r}is", "days": [1, {"x": null}]} } '


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_forced_call_streams_arguments_exactly(size: int) -> None:
    parser = ForcedCall()
    events = stream(parser, pieces(FORCED, size))
    assert isinstance(events[0], CallStart) and events[0].name == "weather"
    content, calls = fold(events)
    assert content == "" and parser.calls == 1
    assert calls == [("weather", '{"city": "Pa\\"r}is", "days": [1, {"x": null}]}')]
    assert json.loads(calls[0][1])["city"] == 'Pa"r}is'


def test_forced_call_announced_before_its_arguments_end() -> None:
    parser = ForcedCall()
    events = parser.feed('{"name": "f", "arguments": {"a": "lo')
    assert [type(e) for e in events] == [CallStart, CallArguments]
    assert events[1] == CallArguments(0, '{"a": "lo')


def test_forced_call_cut_short_before_its_name_is_content() -> None:
    assert fold(stream(ForcedCall(), ['{"name": "wea'])) == ('{"name": "wea', [])


def test_collect_whole_message() -> None:
    content, calls = collect(TaggedCalls(["weather", "time"]), TAGGED)
    assert content == "Let me check."
    assert [(c.function.name, c.function.arguments, c.type) for c in calls] == [
        ("weather", '{"city": "Paris"}', "function"),
        ("time", "{}", "function"),
    ]
    assert len({c.id for c in calls}) == 2
    assert collect(ForcedCall(), FORCED)[0] is None  # only a call: content null
    assert collect(PlainReply(), "") == ("", [])
    assert collect(PlainReply(), "<tool_call>x") == ("<tool_call>x", [])


def test_tool_call_schema_accepts_exactly_calls_of_the_tools() -> None:
    point = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    tools = [
        Tool.model_validate(
            {
                "type": "function",
                "function": {
                    "name": "move",
                    "parameters": {
                        "type": "object",
                        "properties": {"to": {"$ref": "#/$defs/Point"}},
                        "required": ["to"],
                        "$defs": {"Point": point},
                    },
                },
            }
        ),
        Tool.model_validate({"type": "function", "function": {"name": "stop"}}),
    ]
    schema = tool_call_schema(tools)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"name": "move", "arguments": {"to": {"x": 1}}})
    assert validator.is_valid({"name": "stop", "arguments": {}})
    assert not validator.is_valid({"name": "move", "arguments": {"to": {"x": "1"}}})
    assert not validator.is_valid({"name": "stop", "arguments": {"a": 1}})
    assert not validator.is_valid({"name": "jump", "arguments": {}})
    # Definitions are renamed per tool so that two tools' "Point"s cannot collide.
    assert "t0-Point" in schema["$defs"]["call-0"]["properties"]["arguments"]["$defs"]


# --- the Llama 3.x and Mistral conventions ---------------------------------------------


def run(parser: tool_calls.ReplyParser, pieces: list[str]) -> list[tool_calls.ReplyEvent]:
    events = [e for piece in pieces for e in parser.feed(piece)]
    return events + parser.finish()


def calls_of(events: list[tool_calls.ReplyEvent]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for event in events:
        if isinstance(event, tool_calls.CallStart):
            out.append((event.name, ""))
        elif isinstance(event, tool_calls.CallArguments):
            name, text = out[event.index]
            out[event.index] = (name, str(text) + event.text)
    return [(name, json.loads(str(args))) for name, args in out]


def test_call_format_follows_the_template() -> None:
    assert tool_calls.call_format("{{ '[TOOL_CALLS]' }}") == "mistral"
    assert tool_calls.call_format("<|start_header_id|>ipython<|end_header_id|>") == "llama3"
    assert tool_calls.call_format("{{ '<|python_tag|>' }}") == "llama3"
    assert tool_calls.call_format("<tool_call>") == "hermes"


def test_llama3_json_calls_in_pieces() -> None:
    parser = tool_calls.auto_parser("llama3", ["get_weather", "time"])
    events = run(parser, ['{"name": "get', '_weather", "parameters": {"city": "Paris"}}'])
    assert calls_of(events) == [("get_weather", {"city": "Paris"})]
    parser = tool_calls.auto_parser("llama3", ["get_weather", "time"])
    two = (
        '<|python_tag|>{"name": "time", "parameters": {}}; '
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    )
    assert calls_of(run(parser, [two])) == [("time", {}), ("get_weather", {"city": "Oslo"})]


def test_llama3_text_streams_at_once_and_a_bad_call_stays_text() -> None:
    parser = tool_calls.auto_parser("llama3", ["get_weather"])
    assert parser.feed("  Hel") == [tool_calls.Content("  Hel")]
    assert parser.feed("lo") == [tool_calls.Content("lo")]
    parser = tool_calls.auto_parser("llama3", ["get_weather"])
    events = run(parser, ['{"name": "unknown", "parameters": {}}'])
    assert events == [tool_calls.Content('{"name": "unknown", "parameters": {}}')]
    parser = tool_calls.auto_parser("llama3", ["get_weather"])
    assert run(parser, ['{"a": 1']) == [tool_calls.Content('{"a": 1')]


def test_mistral_calls_both_forms() -> None:
    parser = tool_calls.auto_parser("mistral", ["get_weather", "time"])
    listed = (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome"}}, '
        '{"name": "time", "arguments": {}}]'
    )
    assert calls_of(run(parser, [listed[:7], listed[7:]])) == [
        ("get_weather", {"city": "Rome"}),
        ("time", {}),
    ]
    parser = tool_calls.auto_parser("mistral", ["get_weather", "time"])
    newer = '[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}[TOOL_CALLS]time[ARGS]{}'
    assert calls_of(run(parser, [newer])) == [("get_weather", {"city": "Rome"}), ("time", {})]
    parser = tool_calls.auto_parser("mistral", ["get_weather"])
    assert run(parser, ["[TOOL", "S] is not a call"]) == [
        tool_calls.Content("[TOOLS] is not a call")
    ]


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    call = '<tool_call>{"name": "%s", "arguments": {}}</tool_call>'
    two = call % "a" + call % "b"
    assert [n for n, _ in calls_of(run(tool_calls.auto_parser("hermes", ["a", "b"]), [two]))] == [
        "a",
        "b",
    ]
    single = tool_calls.auto_parser("hermes", ["a", "b"], single=True)
    assert [n for n, _ in calls_of(run(single, [two]))] == ["a"]
    listed = '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'
    single = tool_calls.auto_parser("mistral", ["a", "b"], single=True)
    assert [n for n, _ in calls_of(run(single, [listed]))] == ["a"]
