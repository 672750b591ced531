import pytest

from corral.engines.chat_template import CHATML_FALLBACK, ChatTemplate
from corral.errors import ChatTemplateError

LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_fallback_is_chatml() -> None:
    t = ChatTemplate(None)
    assert t.is_fallback and t.source == CHATML_FALLBACK
    out = t.render([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_model_template_gets_bos_and_generation_prompt() -> None:
    t = ChatTemplate(LLAMA3_LIKE, bos_token="<|begin_of_text|>")
    out = t.render([{"role": "system", "content": " be brief "}, {"role": "user", "content": "x"}])
    assert out.startswith("<|begin_of_text|><|start_header_id|>system")
    assert "be brief<|eot_id|>" in out
    assert out.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_no_generation_prompt_when_asked() -> None:
    out = ChatTemplate(None).render([{"role": "user", "content": "x"}], add_generation_prompt=False)
    assert not out.endswith("assistant\n")


def test_raise_exception_becomes_a_clear_400() -> None:
    strict = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('first must be user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate(strict).render([{"role": "assistant", "content": "x"}])
    assert info.value.status == 400
    assert "first must be user" in info.value.message


def test_tojson_keeps_non_ascii_and_tools_are_passed() -> None:
    t = ChatTemplate("{{ tools | tojson }}|{{ messages[0]['content'] | tojson }}")
    out = t.render([{"role": "user", "content": "héllo"}], tools=[{"name": "f"}])
    assert out == '[{"name": "f"}]|"héllo"'


def test_sandbox_blocks_attribute_escape() -> None:
    evil = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(Exception):  # noqa: B017 - jinja2's SecurityError or our wrapper
        ChatTemplate(evil).render([{"role": "user", "content": "x"}])


# --- tools ---------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": {"city": "Paris"}},
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
]

# The structure of Qwen2.5's template (tools in the system turn, <tool_call> blocks,
# tool results as <tool_response> in a user turn), written small for the test.
QWEN_LIKE = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content + '\n\n' }}{% endif %}"
    "{{ '# Tools\n<tools>' }}{% for tool in tools %}{{ '\n' + tool | tojson }}{% endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}"
    "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
    "{%- elif m.role == 'assistant' %}{{ '<|im_start|>assistant' }}"
    "{%- if m.content %}{{ '\n' + m.content }}{% endif %}"
    "{%- for c in m.tool_calls or [] %}"
    '{{ \'\n<tool_call>\n{"name": "\' + c.function.name + \'", "arguments": \' }}'
    "{{ c.function.arguments | tojson }}{{ '}\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\n<tool_response>\n' + m.content + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

EXPECTED_HERMES = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to help "
    "with the user's request.\n\nThe functions you can call are described within "
    "<tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "weather", "description": "Weather in a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n'
    "</tools>\n\nFor each function call, return a JSON object with the function name and its "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
    "<tool_response>\nrain\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_fallback_writes_tools_calls_and_results_the_hermes_way() -> None:
    t = ChatTemplate(None)
    assert not t.renders_tools
    assert t.render(CONVERSATION, tools=TOOLS) == EXPECTED_HERMES


def test_tools_without_a_system_message_get_one() -> None:
    out = ChatTemplate(None).render([{"role": "user", "content": "hi"}], tools=TOOLS)
    assert out.startswith("<|im_start|>system\n# Tools\n")
    assert out.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_tools_aware_template_renders_them_itself() -> None:
    t = ChatTemplate(QWEN_LIKE)
    assert t.renders_tools
    out = t.render(CONVERSATION, tools=TOOLS)
    assert out == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n"
        '{"type": "function", "function": {"name": "weather", "description": "Weather in a '
        'city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}'
        "\n</tools><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nrain\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without tools the template's own system turn is used, untouched.
    plain = t.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert (
        plain
        == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    )
