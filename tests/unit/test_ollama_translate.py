"""Golden tests of the Ollama <-> OpenAI translation (corral.protocol.ollama_openai).

Requests: an Ollama request becomes exactly this worker body. Answers: a worker's
response or chunks become exactly these Ollama objects, durations included.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import EngineError, InvalidRequest, UnsupportedCapability
from corral.protocol import ollama_openai as t
from corral.protocol.ollama import ChatRequest, EmbedRequest, GenerateRequest, Options
from corral.protocol.ollama_template import render
from corral.protocol.parse import validate

DEFAULT_SAMPLING = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
    "max_tokens": None,
}
MARKS = t.Marks(start_ns=1_000, granted_ns=501_000)  # 0.5 ms waiting for the model
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 3,
    "total_tokens": 15,
    "timings": {"prompt_ns": 2_000_000, "generation_ns": 3_000_000, "prompt_tokens_cached": 0},
}
METRICS = {
    "total_duration": 9_000_000,
    "load_duration": 500_000,
    "prompt_eval_count": 12,
    "prompt_eval_duration": 2_000_000,
    "eval_count": 3,
    "eval_duration": 3_000_000,
}
END = 9_001_000


def chat(**fields: Any) -> ChatRequest:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return validate({**base, **fields}, ChatRequest)


def generate(**fields: Any) -> GenerateRequest:
    return validate({"model": "m", "prompt": "Why?", **fields}, GenerateRequest)


# --- requests -----------------------------------------------------------------------


def test_chat_streams_by_default_and_asks_for_usage_and_timings() -> None:
    assert t.chat_request(chat()) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        **DEFAULT_SAMPLING,
        "stream": True,
        "stream_options": {"include_usage": True},
        "timings": True,
    }


def test_chat_options_map_onto_the_workers_samplers() -> None:
    req = chat(
        stream=False,
        system="ignored: not a chat field",
        options={
            "temperature": 0,
            "top_k": 5,
            "top_p": 0.5,
            "min_p": 0.05,
            "seed": 42,
            "stop": ["\n", "user:"],
            "repeat_penalty": 1.0,
            "repeat_last_n": 0,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "num_predict": 100,
        },
    )
    assert t.chat_request(req) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "top_k": 5,
        "top_p": 0.5,
        "min_p": 0.05,
        "repeat_penalty": 1.0,
        "repeat_last_n": 0,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 42,
        "stop": ["\n", "user:"],
        "max_tokens": 100,
        "stream": False,
        "timings": True,
    }


def test_every_ollama_option_has_a_declared_fate() -> None:
    """A new field in Options must be mapped, refused unless neutral, or knowingly ignored."""
    groups = [set(t.SAMPLERS), set(t.NEUTRAL), t.LOAD_OPTIONS, t.IGNORED, set(t.MAPPED)]
    assert sum(map(len, groups)) == len(set().union(*groups))  # disjoint
    assert set().union(*groups) == set(Options.model_fields)


@pytest.mark.parametrize("limit", [-1, -2, 0])
def test_num_predict_without_a_positive_limit_generates_until_the_context_is_full(
    limit: int,
) -> None:
    assert t.sampling(chat(options={"num_predict": limit}).options)["max_tokens"] is None


def test_random_seed_and_single_stop_string() -> None:
    body = t.sampling(chat(options={"seed": -1, "stop": "END"}).options)
    assert "seed" not in body and body["stop"] == ["END"]


def test_load_time_options_and_neutral_unsupported_samplers_change_nothing() -> None:
    options = {
        "num_ctx": 8192,
        "num_thread": 8,
        "num_batch": 2,
        "num_gpu": 1,
        "main_gpu": 0,
        "use_mmap": True,
        "use_mlock": False,
        "numa": False,
        "low_vram": False,
        "f16_kv": True,
        "vocab_only": False,
        "logits_all": False,
        "embedding_only": False,
        "num_keep": 5,
        "penalize_newline": True,
        "typical_p": 1.0,
        "tfs_z": 1.0,
        "mirostat": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
    }
    assert t.chat_request(chat(options=options)) == t.chat_request(chat())


@pytest.mark.parametrize(("option", "value"), [("mirostat", 2), ("typical_p", 0.7), ("tfs_z", 0.5)])
def test_samplers_the_engine_lacks_are_refused_not_ignored(option: str, value: float) -> None:
    with pytest.raises(InvalidRequest) as err:
        t.chat_request(chat(options={option: value}))
    assert option in err.value.message and err.value.param == f"options.{option}"


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        ({"temprature": 0.5}, "options", "unknown option 'temprature' (did you mean 'temperature'"),
        ({"bogus": 1}, "options", "unknown option 'bogus'"),
        ("fast", "options", "valid dictionary"),
        ({"num_predict": "10"}, "options.num_predict", "valid integer"),
        ({"temperature": "hot"}, "options.temperature", "valid number"),
        ({"temperature": 3}, "options.temperature", "less than or equal to 2"),
        ({"stop": [1]}, "options.stop", "valid string"),
        ({"num_predict": -3}, "options.num_predict", "greater than or equal to -2"),
    ],
)
def test_bad_options_are_a_400_naming_them(options: Any, param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        chat(options=options)
    assert err.value.param == param and words in err.value.message


def test_wrong_types_elsewhere_are_refused_too() -> None:
    for fields in ({"stream": "yes"}, {"messages": "hi"}, {"format": "xml"}, {"think": 1}):
        with pytest.raises(InvalidRequest):
            chat(**fields)


def test_format_json_and_json_schema() -> None:
    assert t.chat_request(chat(format="json"))["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert t.chat_request(chat(format=schema))["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "ollama_format", "schema": schema, "strict": True},
    }
    assert "response_format" not in t.chat_request(chat(format=""))


def test_tools_tool_calls_and_tool_results() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    req = chat(
        tools=[tool],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "get_time", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "12:00", "tool_name": "get_time"},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
    )
    body = t.chat_request(req)
    assert body["tools"] == [tool]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_2_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "content": "12:00", "tool_call_id": "call_2_1", "name": "get_time"},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_2_0", "name": "get_weather"},
    ]


def test_images_thinking_and_logprobs_are_refused_in_ollamas_words() -> None:
    with pytest.raises(UnsupportedCapability) as err:
        t.chat_request(chat(messages=[{"role": "user", "content": "?", "images": ["aGk="]}]))
    assert '"m" does not support images' in err.value.message
    assert err.value.param == "messages[0].images"
    for think in (True, "high"):
        with pytest.raises(UnsupportedCapability) as err:
            t.chat_request(chat(think=think))
        assert err.value.message == '"m" does not support thinking'
    t.chat_request(chat(think=False))
    with pytest.raises(InvalidRequest):
        t.chat_request(chat(logprobs=True))
    with pytest.raises(UnsupportedCapability):
        t.generate_request(generate(images=["aGk="]))


def test_generate_uses_the_models_chat_template_with_system_and_prompt() -> None:
    path, body = t.generate_request(generate(system="Be terse.", stream=False, context=[1, 2]))
    assert path == "/v1/chat/completions"
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Why?"},
        ],
        **DEFAULT_SAMPLING,
        "stream": False,
        "timings": True,
    }


def test_raw_generate_sends_the_prompt_as_is_with_no_16_token_default() -> None:
    path, body = t.generate_request(generate(raw=True, options={"num_predict": 7}))
    assert path == "/v1/completions"
    assert body == {
        "model": "m",
        "prompt": "Why?",
        **DEFAULT_SAMPLING,
        "max_tokens": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
        "timings": True,
    }
    assert t.generate_request(generate(raw=True))[1]["max_tokens"] is None


def test_template_override_is_rendered_and_sent_as_a_completion() -> None:
    path, body = t.generate_request(
        generate(system="S", template="{{ .System }}|U: {{ .Prompt }}|A: {{ .Response }}</s>")
    )
    assert (path, body["prompt"]) == ("/v1/completions", "S|U: Why?|A: ")


def test_generate_refusals() -> None:
    with pytest.raises(InvalidRequest) as err:
        t.generate_request(generate(raw=True, system="S"))
    assert err.value.message == "raw mode does not support template, system, or context"
    with pytest.raises(UnsupportedCapability) as err:
        t.generate_request(generate(suffix="    return x"))
    assert '"m" does not support insert' in err.value.message
    t.generate_request(generate(suffix=""))  # the Python client's default
    assert t.generate_request(generate(format="json"))[1]["response_format"] == {
        "type": "json_object"
    }


def test_raw_generate_takes_format_as_a_completion_json_schema() -> None:
    path, body = t.generate_request(generate(raw=True, format="json"))
    assert path == t.COMPLETION_PATH and body["json_schema"] == {"type": "object"}
    assert "response_format" not in body
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    _, body = t.generate_request(generate(template="{{ .Prompt }}", format=schema))
    assert body["json_schema"] == schema


def test_embed_inputs_and_body() -> None:
    req = validate({"model": "e", "input": "hello", "dimensions": 8}, EmbedRequest)
    assert t.embed_inputs(req.input) == ["hello"]
    assert t.embed_inputs("") == [] and t.embed_inputs(["a", "b"]) == ["a", "b"]
    assert t.embed_request("e", ["hello"], 8) == {
        "model": "e",
        "input": ["hello"],
        "encoding_format": "float",
        "dimensions": 8,
        "truncate": True,  # Ollama's default: cut to the context, do not refuse
    }
    assert "truncate" not in t.embed_request("e", ["hello"], None, truncate=False)


# --- the template override ----------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "system", "expected"),
    [
        ("[INST] {{ .Prompt }} [/INST]", "", "[INST] Q [/INST]"),
        ("{{ if .System }}<s>{{ .System }}</s>{{ end }}U:{{ .Prompt }}", "S", "<s>S</s>U:Q"),
        ("{{ if .System }}<s>{{ .System }}</s>{{ end }}U:{{ .Prompt }}", "", "U:Q"),
        ("{{- if .Prompt }}U: {{ .Prompt }}\n{{ end -}}\n  A:", "", "U: Q\nA:"),
        ("x  {{- .Prompt -}}  y", "", "xQy"),
        ("{{.Prompt}}{{.Response}}<|end|>{{ .Prompt }}", "", "Q"),
    ],
)
def test_template_subset(template: str, system: str, expected: str) -> None:
    assert render(template, system=system, prompt="Q") == expected


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{{ range .Messages }}{{ .Content }}{{ end }}", "{{ range .Messages }}"),
        ("{{ if .System }}{{ if .Prompt }}x{{ end }}{{ end }}", "nested"),
        ("{{ if .System }}x", "no {{ end }}"),
        ("{{ .Suffix }}", "{{ .Suffix }}"),
    ],
)
def test_template_beyond_the_subset_is_a_400_naming_what(template: str, named: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        render(template, system="", prompt="Q")
    assert named in err.value.message and err.value.param == "template"


# --- answers ------------------------------------------------------------------------


def test_timestamp_is_rfc3339_utc_with_nanoseconds() -> None:
    assert t.timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert t.timestamp(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert t.timestamp(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_whole_chat_answer_with_tool_calls_and_durations() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": USAGE,
    }
    assert t.chat_response(body, model="m", created_at="T", marks=MARKS, end_ns=END) == {
        "model": "m",
        "created_at": "T",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        "done_reason": "stop",
        "done": True,
        **METRICS,
    }


def test_whole_generate_answer_from_a_completion() -> None:
    body = {
        "object": "text_completion",
        "choices": [{"text": "Because.", "index": 0, "finish_reason": "length"}],
        "usage": USAGE,
    }
    assert t.generate_response(body, model="m", created_at="T", marks=MARKS, end_ns=END) == {
        "model": "m",
        "created_at": "T",
        "response": "Because.",
        "done": True,
        "done_reason": "length",
        **METRICS,
    }


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }


def test_chat_stream_lines_then_the_final_line() -> None:
    tr = t.StreamTranslator("chat", "m", MARKS)
    lines = [
        *tr.feed(chunk({"role": "assistant", "content": ""}), "T0"),
        *tr.feed(chunk({"content": "Hel"}), "T1"),
        *tr.feed(chunk({"content": "lo"}), "T2"),
        *tr.feed(chunk({}, "stop"), "T3"),
        *tr.feed({"object": "chat.completion.chunk", "choices": [], "usage": USAGE}, "T4"),
    ]
    assert lines == [
        {"model": "m", "created_at": "T1", "message": {"role": "assistant", "content": "Hel"},
         "done": False},
        {"model": "m", "created_at": "T2", "message": {"role": "assistant", "content": "lo"},
         "done": False},
    ]  # fmt: skip
    assert tr.final("T5", END) == {
        "model": "m",
        "created_at": "T5",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        **METRICS,
    }


def test_streamed_tool_call_pieces_are_joined_into_one_line() -> None:
    tr = t.StreamTranslator("chat", "m", MARKS)
    pieces = [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"a": '}},
        {"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        {"index": 0, "function": {"arguments": "1}"}},
    ]
    lines = [line for p in pieces for line in tr.feed(chunk({"tool_calls": [p]}), "T")]
    assert lines == []
    assert tr.feed(chunk({}, "tool_calls"), "T") == [
        {
            "model": "m",
            "created_at": "T",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "f", "arguments": {"a": 1}}},
                    {"function": {"name": "g", "arguments": {}}},
                ],
            },
            "done": False,
        }
    ]
    assert tr.final("T", END)["done_reason"] == "stop"


def test_generate_stream_from_completion_chunks() -> None:
    tr = t.StreamTranslator("generate", "m", MARKS)
    lines = tr.feed({"choices": [{"text": "Be", "index": 0, "finish_reason": None}]}, "T1")
    lines += tr.feed({"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}, "T2")
    lines += tr.feed({"choices": [], "usage": USAGE}, "T3")
    assert lines == [{"model": "m", "created_at": "T1", "response": "Be", "done": False}]
    assert tr.final("T4", END) == {
        "model": "m",
        "created_at": "T4",
        "response": "",
        "done": True,
        "done_reason": "length",
        **METRICS,
    }


def test_durations_without_engine_timings_are_the_gateways() -> None:
    """A foreign server (vLLM) gives no timings: prefill is until the first chunk,
    generation after it, so clients that divide by eval_duration never divide by 0."""
    tr = t.StreamTranslator("generate", "m", MARKS)
    first = MARKS.granted_ns + 2_000_000
    final = tr.final("T", END, first_ns=first)
    assert final["prompt_eval_duration"] == 2_000_000
    assert final["eval_duration"] == END - first
    assert final["total_duration"] == END - MARKS.start_ns
    whole = tr.final("T", END)  # no first chunk known (a whole answer): all generation
    assert whole["prompt_eval_duration"] == 0
    assert whole["eval_duration"] == END - MARKS.granted_ns


def test_tool_arguments_that_are_not_an_object_are_an_engine_error() -> None:
    with pytest.raises(EngineError):
        t.tool_calls([{"function": {"name": "f", "arguments": "[1, 2"}}])
    with pytest.raises(EngineError):
        t.tool_calls([{"function": {"name": "f", "arguments": "[1, 2]"}}])


def test_embeddings_in_input_order_with_counts() -> None:
    body = {
        "data": [
            {"object": "embedding", "embedding": [0.0, 1.0], "index": 1},
            {"object": "embedding", "embedding": [1.0, 0.0], "index": 0},
        ],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    assert t.embed_response(body, model="e", marks=MARKS, end_ns=END) == {
        "model": "e",
        "embeddings": [[1.0, 0.0], [0.0, 1.0]],
        "total_duration": 9_000_000,
        "load_duration": 500_000,
        "prompt_eval_count": 4,
    }
    assert t.legacy_embedding(body) == {"embedding": [0.0, 1.0]}
    assert t.legacy_embedding({}) == {"embedding": []}


def test_load_and_unload_replies() -> None:
    assert t.empty_reply("generate", "m", "T", "load") == {
        "model": "m",
        "created_at": "T",
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    assert t.empty_reply("chat", "m", "T", "unload") == {
        "model": "m",
        "created_at": "T",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "unload",
        "done": True,
    }
