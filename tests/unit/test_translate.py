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
    with pytest.raises(InvalidRequest, match="response_format"):
        translate.refuse_unsupported(chat(response_format={"type": "json_object"}))
    with pytest.raises(InvalidRequest, match="logprobs"):
        translate.refuse_unsupported(chat(logprobs=True))
    with pytest.raises(InvalidRequest, match="suffix"):
        translate.refuse_unsupported(CompletionRequest(model="m", prompt="x", suffix="y"))


def test_completion_with_token_prompt() -> None:
    req = CompletionRequest(model="m", prompt=[5, 6, 7], max_tokens=3)
    gen = translate.completion_request(req, fake_tokenize, context_length=10)
    assert list(gen.prompt_tokens) == [5, 6, 7]
