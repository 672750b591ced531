"""Translation for foreign OpenAI servers: names and usage, whatever the chunking."""

from __future__ import annotations

import json

import pytest

from corral.protocol.handoff import USAGE_COMMENT
from corral.protocol.upstream import (
    ForeignServer,
    StreamTranslator,
    rename_model,
    translate_body,
    translate_request,
)

STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"/models/q.gguf",'
    b'"choices":[{"index":0,"delta":{"content":"say \\"model\\":\\"x\\""}}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"/models/q.gguf",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"/models/q.gguf",'
    b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
    b"data: [DONE]\n\n"
)


def test_requests_carry_the_served_name_and_ask_for_usage() -> None:
    body = json.dumps({"model": "q:latest", "stream": True, "messages": []}).encode()
    sent, translation = translate_request(ForeignServer("qwen"), body, "q:latest")
    request = json.loads(sent)
    assert request["model"] == "qwen"
    assert request["stream_options"] == {"include_usage": True}
    assert translation.hide_usage and translation.model == b'"q:latest"'


def test_a_client_that_asked_for_usage_keeps_it_and_no_name_means_no_rename() -> None:
    body = {"model": "q", "stream": True, "stream_options": {"include_usage": True}}
    sent, translation = translate_request(ForeignServer(), json.dumps(body).encode(), "q:latest")
    assert json.loads(sent) == body
    assert not translation.hide_usage
    whole = {"model": "q", "stream": False}
    sent, translation = translate_request(ForeignServer(), json.dumps(whole).encode(), "q")
    assert json.loads(sent) == whole and not translation.hide_usage


def test_a_body_that_is_not_a_json_object_goes_unchanged() -> None:
    for body in (b"{not json", b"[1, 2]", b""):
        sent, _ = translate_request(ForeignServer("x"), body, "q:latest")
        assert sent == body


def test_answers_carry_the_corral_name_but_content_is_untouched() -> None:
    _, translation = translate_request(ForeignServer(), b'{"model":"q"}', 'we"ird')
    body = b'{"model" : "gpt-3.5-turbo","choices":[{"message":{"content":"\\"model\\":\\"a\\""}}]}'
    renamed = json.loads(rename_model(body, translation))
    assert renamed["model"] == 'we"ird'
    assert renamed["choices"][0]["message"]["content"] == '"model":"a"'


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
def test_streams_are_translated_event_by_event_however_they_arrive(
    piece: int, newline: bytes
) -> None:
    _, translation = translate_request(ForeignServer(), b'{"model":"q","stream":true}', "q:latest")
    translator = StreamTranslator(translation)
    stream = STREAM.replace(b"\n", newline)
    pieces = [translator.feed(stream[i : i + piece]) for i in range(0, len(stream), piece)]
    out = b"".join(pieces) + translator.close()
    if piece == 1:  # each event passed on as soon as its blank line is in
        assert sum(1 for p in pieces if p) == 4
    events = out.split(b"\n\n")
    assert events[-1] == b""
    assert all(b"/models/q.gguf" not in e for e in events)
    first = json.loads(events[0][5:])
    assert first["model"] == "q:latest"
    assert first["choices"][0]["delta"]["content"] == 'say "model":"x"'
    # The usage chunk the client did not ask for is the gateway's comment now.
    counts = b'{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}'
    assert events[2] == USAGE_COMMENT + b'{"usage":' + counts + b"}"
    assert events[3] == b"data: [DONE]"


def test_a_usage_chunk_the_client_asked_for_stays_a_chunk() -> None:
    body = b'{"model":"q","stream":true,"stream_options":{"include_usage":true}}'
    _, translation = translate_request(ForeignServer(), body, "q:latest")
    translator = StreamTranslator(translation)
    out = translator.feed(STREAM) + translator.close()
    assert USAGE_COMMENT not in out
    assert b'"usage":{"prompt_tokens":5' in out and b'"model":"q:latest"' in out


def test_a_stream_cut_short_passes_on_what_it_had() -> None:
    _, translation = translate_request(ForeignServer(), b'{"model":"q"}', "q:latest")
    translator = StreamTranslator(translation)
    assert translator.feed(b'{"model":"x","choices"') == b""
    assert translator.close() == b'{"model":"q:latest","choices"'


def test_a_stream_without_usage_gets_an_estimate_for_the_gateway_only() -> None:
    """llama_cpp.server sends no usage in streams: the gateway counts its chunks (one
    token each) in its own comment; nothing is added for the client to see."""
    body = b'{"model":"q","stream":true,"stream_options":{"include_usage":true}}'
    _, translation = translate_request(ForeignServer(), body, "q:latest")
    translator = StreamTranslator(translation)
    events = [
        b'data: {"model":"f","choices":[{"delta":{"role":"assistant"}}]}',
        b'data: {"model":"f","choices":[{"delta":{"content":"Hel"}}]}',
        b'data: {"model":"f","choices":[{"delta":{"content":"\\"lo"}}]}',
        b'data: {"model":"f","choices":[{"delta":{"content":""},"finish_reason":"stop"}]}',
        b"data: [DONE]",
    ]
    out = translator.feed(b"\n\n".join(events) + b"\n\n") + translator.close()
    estimate = b'{"prompt_tokens":0,"completion_tokens":2,"estimated":true}'
    comment = USAGE_COMMENT + b'{"usage":' + estimate + b"}"
    assert out.split(b"\n\n")[-3:] == [comment, b"data: [DONE]", b""]
    assert out.count(b"data:") == len(events)


def test_llama_server_timings_become_ollamas_when_the_gateway_asks() -> None:
    event = (
        b'data: {"choices":[],"model":"/m.gguf","usage":{"completion_tokens":3,'
        b'"prompt_tokens":18},"timings":{"prompt_n":18,"prompt_ms":2.375,"predicted_ms":1.056}}'
    )
    body = b'{"model":"q","stream":true,"stream_options":{"include_usage":true},"timings":true}'
    _, translation = translate_request(ForeignServer(), body, "q:latest")
    out = translate_body(event, translation)
    usage = json.loads(out[6:])["usage"]
    assert usage["timings"] == {"prompt_ns": 2_375_000, "generation_ns": 1_056_000}
    # Not asked (an OpenAI client): the answer keeps the server's own shape.
    _, plain = translate_request(ForeignServer(), b'{"model":"q","stream":true}', "q:latest")
    assert b'"usage":{"completion_tokens":3,"prompt_tokens":18}' in translate_body(event, plain)
