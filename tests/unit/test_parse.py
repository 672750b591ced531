import pytest

from corral.errors import InvalidRequest
from corral.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from corral.protocol.parse import parse_body


def error_of(raw: bytes, model: type) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_body(raw, model)
    return info.value


def test_malformed_json() -> None:
    err = error_of(b'{"model": ', ChatCompletionRequest)
    assert err.status == 400 and "parse the JSON body" in err.message


def test_non_object_body() -> None:
    assert "JSON object" in error_of(b"[1, 2]", ChatCompletionRequest).message


def test_empty_body() -> None:
    assert "empty" in error_of(b"", ChatCompletionRequest).message


def test_missing_field_names_parameter() -> None:
    err = error_of(b'{"model": "m"}', ChatCompletionRequest)
    assert err.param == "messages" and "Missing required parameter" in err.message


def test_negative_max_tokens() -> None:
    err = error_of(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}',
        ChatCompletionRequest,
    )
    assert err.param == "max_tokens"
    assert "-1" in err.message


def test_nested_location_is_readable() -> None:
    err = error_of(
        b'{"model":"m","messages":[{"role":"robot","content":"x"}]}', ChatCompletionRequest
    )
    assert err.param == "messages[0].role"


def test_temperature_out_of_range() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":5}'
    assert error_of(raw, ChatCompletionRequest).param == "temperature"


def test_unknown_fields_are_ignored() -> None:
    req = parse_body(
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"store":true,"metadata":{}}',
        ChatCompletionRequest,
    )
    assert req.model == "m"


def test_logit_bias_keys_must_be_token_ids() -> None:
    raw = b'{"model":"m","prompt":"x","logit_bias":{"hello":1}}'
    assert error_of(raw, CompletionRequest).param.startswith("logit_bias")


def test_completion_prompt_forms() -> None:
    assert parse_body(b'{"model":"m","prompt":["one"]}', CompletionRequest).prompt == "one"
    assert parse_body(b'{"model":"m","prompt":[1,2,3]}', CompletionRequest).prompt == [1, 2, 3]
    assert error_of(b'{"model":"m","prompt":["a","b"]}', CompletionRequest).param == "prompt"


def test_completion_defaults_to_16_tokens_like_openai() -> None:
    assert parse_body(b'{"model":"m","prompt":"x"}', CompletionRequest).max_tokens == 16


def test_embedding_input_forms() -> None:
    one = parse_body(b'{"model":"m","input":"a"}', EmbeddingRequest)
    assert one.inputs() == ["a"]
    many = parse_body(b'{"model":"m","input":["a","b"]}', EmbeddingRequest)
    assert many.inputs() == ["a", "b"]
    tokens = parse_body(b'{"model":"m","input":[1,2]}', EmbeddingRequest)
    assert tokens.inputs() == [[1, 2]]
    assert error_of(b'{"model":"m","input":[]}', EmbeddingRequest).param == "input"
