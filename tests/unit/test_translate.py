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
        translate.refuse_unsupported(chat(logprobs=True))
    with pytest.raises(InvalidRequest, match="suffix"):
        translate.refuse_unsupported(CompletionRequest(model="m", prompt="x", suffix="y"))


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


class FakeGrammar:
    """Stands in for ``Engine.json_grammar``: records what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []

    def __call__(self, schema: dict[str, object] | None, *, param: str) -> str:
        self.calls.append((schema, param))
        return f"grammar for {param}"


def grammar_of(**fields: object) -> tuple[str | None, FakeGrammar]:
    fake = FakeGrammar()
    gen = translate.chat_request(chat(**fields), ChatTemplate(None), fake_tokenize, 10_000, fake)
    return gen.grammar, fake


def test_response_format_selects_the_grammar() -> None:
    grammar, fake = grammar_of()
    assert grammar is None and fake.calls == []
    assert grammar_of(response_format={"type": "text"})[0] is None
    grammar, fake = grammar_of(response_format={"type": "json_object"})
    assert grammar == "grammar for response_format" and fake.calls == [(None, "response_format")]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    _, fake = grammar_of(response_format=fmt)
    assert fake.calls == [(schema, "response_format")]


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


def test_forced_call_checks_each_tool_schema_then_builds_one_grammar() -> None:
    grammar, fake = grammar_of(tools=[WEATHER, TIME], tool_choice="required")
    assert grammar == "grammar for tools"
    params = WEATHER["function"]["parameters"]  # type: ignore[index]
    assert fake.calls[0] == (params, "tools[0].function.parameters")
    combined, param = fake.calls[1]
    assert param == "tools" and len(fake.calls) == 2  # "time" has no parameters to check
    assert [alt["$ref"] for alt in combined["anyOf"]] == ["#/$defs/call-0", "#/$defs/call-1"]  # type: ignore[index]


def test_forced_call_wins_over_response_format_and_auto_has_no_grammar() -> None:
    grammar, _ = grammar_of(
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        response_format={"type": "json_object"},
    )
    assert grammar == "grammar for tools"
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
