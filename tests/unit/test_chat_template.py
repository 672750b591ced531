import pytest

from corral.engines.chat_template import CHATML_FALLBACK, ChatTemplate, ChatTemplateError

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
