import json

import pytest

from corral.engines.chat_template import ChatTemplate
from corral.errors import ContextLengthExceeded, InvalidRequest, UnsupportedCapability
from corral.protocol.openai import ChatCompletionRequest, CompletionRequest
from corral.worker import translate


def chat(**fields: object) -> ChatCompletionRequest:
    base: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**base, **fields})


def fake_tokenize(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_openai_defaults_leave_distribution_untouched() -> None:
    p = translate.sampling_from(chat())
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (1.0, 1.0, 0, 0.0)
    assert not p.penalized and not p.greedy


def test_sampling_fields_and_extensions_are_mapped() -> None:
    p = translate.sampling_from(
        chat(
            temperature=0,
            top_p=0.5,
            top_k=7,
            min_p=0.1,
            seed=3,
            repeat_penalty=1.2,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={"42": -100},
        )
    )
    assert p.greedy and p.penalized
    assert (p.top_p, p.top_k, p.min_p, p.seed) == (0.5, 7, 0.1, 3)
    assert p.logit_bias == {42: -100.0}


def test_chat_request_renders_template_and_counts_tokens() -> None:
    req = chat(max_completion_tokens=5, stop=["x", ""], ignore_eos=True)
    gen = translate.chat_request(req, ChatTemplate(None), fake_tokenize, context_length=1000)
    expected = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert gen.prompt_tokens == fake_tokenize(expected)
    assert gen.max_tokens == 5 and list(gen.stop) == ["x"] and gen.ignore_eos


def test_text_parts_are_joined() -> None:
    req = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert translate.template_messages(req.messages)[0]["content"] == "ab"


def test_images_to_text_model_are_refused() -> None:
    req = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
                ],
            }
        ]
    )
    with pytest.raises(UnsupportedCapability) as info:
        translate.template_messages(req.messages)
    assert "image_url" in info.value.message


def test_prompt_that_fills_context_is_refused_with_numbers() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        translate.check_context(100, None, 100, what="messages")
    assert "100 tokens" in info.value.message and info.value.code == "context_length_exceeded"


def test_prompt_plus_completion_over_context_is_refused() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        translate.check_context(60, 50, 100, what="prompt")
    assert "110 tokens (60 in the prompt, 50 in the completion)" in info.value.message


def test_fits_exactly() -> None:
    translate.check_context(50, 50, 100, what="prompt")


def test_unsupported_features_are_named() -> None:
    with pytest.raises(InvalidRequest, match="logprobs"):
        translate.logprobs_of(chat(logprobs=True, tools=[WEATHER]))
    assert translate.logprobs_of(chat(logprobs=True, top_logprobs=4)) == 4
    assert translate.logprobs_of(chat(logprobs=True)) == 0
    assert translate.logprobs_of(chat()) is None
    fim = CompletionRequest(model="m", prompt="def f(", suffix="    return x", max_tokens=4)
    with pytest.raises(InvalidRequest, match="suffix"):
        translate.completion_request(fim, fake_tokenize, 100)  # an engine without FIM
    gen = translate.completion_request(
        fim, fake_tokenize, 100, infill=lambda pre, suf: [1, *fake_tokenize(pre), 2, 3]
    )
    assert list(gen.prompt_tokens) == [1, *fake_tokenize("def f("), 2, 3]
    with pytest.raises(InvalidRequest, match="text prompt"):
        translate.refuse_unsupported(CompletionRequest(model="m", prompt=[1, 2], suffix="y"))


def test_completion_with_token_prompt() -> None:
    req = CompletionRequest(model="m", prompt=[5, 6, 7], max_tokens=3)
    gen = translate.completion_request(req, fake_tokenize, context_length=10)
    assert list(gen.prompt_tokens) == [5, 6, 7]


# --- structured outputs and tool calls ----------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "time"}}


class FakeCheck:
    """Stands in for ``Engine.check_grammar``: records what it was asked to accept."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, grammar: str, *, param: str) -> None:
        self.calls.append((grammar, param))


def grammar_of(**fields: object) -> tuple[str | None, FakeCheck]:
    fake = FakeCheck()
    gen = translate.chat_request(chat(**fields), ChatTemplate(None), fake_tokenize, 10_000, fake)
    return gen.grammar, fake


def schema_of(grammar: str | None) -> object:
    """The JSON Schema inside an llguidance grammar (``guidance`` adds its options)."""
    assert grammar is not None
    schema = dict(json.loads(grammar)["grammars"][0]["json_schema"])
    schema.pop("x-guidance")
    return schema


def test_response_format_selects_the_grammar() -> None:
    grammar, fake = grammar_of()
    assert grammar is None and fake.calls == []
    assert grammar_of(response_format={"type": "text"})[0] is None
    grammar, fake = grammar_of(response_format={"type": "json_object"})
    assert schema_of(grammar) == {"type": "object"}
    assert fake.calls == [(grammar, "response_format")]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    grammar, fake = grammar_of(response_format=fmt)
    assert schema_of(grammar) == {**schema, "additionalProperties": False}
    assert fake.calls == [(grammar, "response_format")]


def test_extensions_select_the_grammar() -> None:
    grammar, fake = grammar_of(grammar='root ::= "yes" | "no"')
    assert grammar is not None and '"yes"' in grammar and "start:" in grammar  # GBNF -> Lark
    assert fake.calls == [(grammar, "grammar")]
    grammar, fake = grammar_of(json_schema={"type": "integer"})
    assert schema_of(grammar) == {"type": "integer"} and fake.calls[0][1] == "json_schema"
    grammar, fake = grammar_of(structured_outputs={"regex": "[0-9]+"})
    assert grammar is not None and fake.calls[0][1] == "structured_outputs.regex"
    grammar, fake = grammar_of(structured_outputs={"choice": ["left", "right"]})
    assert grammar is not None and '"left" | "right"' in grammar
    grammar, _ = grammar_of(structured_outputs={"json": '{"type": "boolean"}'})
    assert schema_of(grammar) == {"type": "boolean"}


def test_two_constraints_on_one_reply_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="twice") as info:
        grammar_of(response_format={"type": "json_object"}, grammar='root ::= "a"')
    assert info.value.param == "grammar"
    with pytest.raises(InvalidRequest, match="twice"):
        grammar_of(structured_outputs={"regex": "a", "choice": ["a"]})


def test_a_completion_takes_the_extensions_too() -> None:
    req = CompletionRequest(model="m", prompt="x", structured_outputs={"choice": ["a", "b"]})
    fake = FakeCheck()
    gen = translate.completion_request(req, fake_tokenize, 100, fake)
    assert gen.grammar is not None and fake.calls == [(gen.grammar, "structured_outputs.choice")]
    with pytest.raises(UnsupportedCapability):
        translate.completion_request(req, fake_tokenize, 100)  # an engine without grammars


def test_json_schema_without_schema_is_refused() -> None:
    for fmt in ({"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "x"}}):
        with pytest.raises(InvalidRequest) as info:
            grammar_of(response_format=fmt)
        assert info.value.param == "response_format.json_schema.schema"


def test_tool_choice_modes() -> None:
    tools = [WEATHER, TIME]
    assert translate.tool_choice(chat()) == ("off", [])
    assert translate.tool_choice(chat(tool_choice="auto")) == ("off", [])
    mode, chosen = translate.tool_choice(chat(tools=tools))
    assert mode == "auto" and [t.function.name for t in chosen] == ["weather", "time"]
    assert translate.tool_choice(chat(tools=tools, tool_choice="none")) == ("off", [])
    mode, chosen = translate.tool_choice(chat(tools=tools, tool_choice="required"))
    assert mode == "forced" and len(chosen) == 2
    named = {"type": "function", "function": {"name": "time"}}
    mode, chosen = translate.tool_choice(chat(tools=tools, tool_choice=named))
    assert mode == "forced" and [t.function.name for t in chosen] == ["time"]


def test_bad_tool_choices_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="requires tools") as info:
        translate.tool_choice(chat(tool_choice="required"))
    assert info.value.param == "tool_choice"
    unknown = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(InvalidRequest, match=r"'nope'.*'weather'") as info:
        translate.tool_choice(chat(tools=[WEATHER], tool_choice=unknown))
    assert info.value.param == "tool_choice"


def test_forced_call_builds_one_grammar_for_every_allowed_tool() -> None:
    grammar, fake = grammar_of(tools=[WEATHER, TIME], tool_choice="required")
    assert fake.calls == [(grammar, "tools")]
    combined = schema_of(grammar)
    assert [alt["$ref"] for alt in combined["anyOf"]] == ["#/$defs/call-0", "#/$defs/call-1"]  # type: ignore[index]


def test_forced_call_names_the_tool_whose_schema_is_refused() -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}},
    }
    with pytest.raises(InvalidRequest, match="'uniqueItems' at \\$") as info:
        grammar_of(tools=[WEATHER, bad], tool_choice="required")
    assert info.value.param == "tools[1].function.parameters"


def test_forced_call_wins_over_response_format_and_auto_has_no_grammar() -> None:
    grammar, _ = grammar_of(
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        response_format={"type": "json_object"},
    )
    assert schema_of(grammar)["anyOf"] == [{"$ref": "#/$defs/call-0"}]  # type: ignore[index]
    assert grammar_of(tools=[WEATHER])[0] is None


def test_reply_parser_follows_tool_choice() -> None:
    assert type(translate.reply_parser(chat())).__name__ == "PlainReply"
    assert type(translate.reply_parser(chat(tools=[WEATHER]))).__name__ == "TaggedCalls"
    forced = translate.reply_parser(chat(tools=[WEATHER], tool_choice="required"))
    assert type(forced).__name__ == "ForcedCall"


def test_tool_call_arguments_reach_templates_as_objects() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    req = chat(messages=[{"role": "assistant", "content": None, "tool_calls": [call]}])
    item = translate.template_messages(req.messages)[0]
    assert item["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert item["content"] == ""
