import json

from corral.engines.base import Finished
from corral.errors import WorkerCrashed
from corral.protocol.openai import ToolCall, ToolCallFunction
from corral.worker.responses import (
    ChatStreamWriter,
    CompletionStreamWriter,
    chat_completion,
    error_event,
)
from corral.worker.tool_calls import CallArguments, CallStart, Content


def events(raw: bytes) -> list[dict]:
    frames = raw.decode().split("\n\n")
    assert frames[-1] == ""
    out = []
    for frame in frames[:-1]:
        assert frame.startswith("data: ")
        out.append(json.loads(frame[len("data: ") :]))
    return out


def test_chat_stream_matches_openai_shape() -> None:
    w = ChatStreamWriter("m:latest", include_usage=False)
    first, delta, last = (
        events(w.start())[0],
        events(w.delta("hi"))[0],
        events(w.finish(Finished("length", 3, 4))),
    )
    assert first["object"] == "chat.completion.chunk" and first["model"] == "m:latest"
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert "usage" not in first
    assert delta["choices"][0]["delta"] == {"content": "hi"}
    assert len(last) == 1 and last[0]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert first["id"] == delta["id"] == last[0]["id"]


def test_chat_stream_usage_chunk() -> None:
    w = ChatStreamWriter("m", include_usage=True)
    assert events(w.delta("x"))[0]["usage"] is None
    finish, usage = events(w.finish(Finished("stop", 3, 4, prompt_tokens_cached=2)))
    assert finish["usage"] is None
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


def test_completion_stream_shape() -> None:
    w = CompletionStreamWriter("m", include_usage=False)
    chunk = events(w.delta("abc"))[0]
    assert chunk["object"] == "text_completion"
    assert chunk["choices"] == [
        {"text": "abc", "index": 0, "logprobs": None, "finish_reason": None}
    ]


def test_error_event_is_openai_error() -> None:
    body = events(error_event(WorkerCrashed("boom")))[0]
    assert body == {
        "error": {
            "message": "boom",
            "type": "server_error",
            "param": None,
            "code": "worker_crashed",
        }
    }


def test_tool_call_stream_matches_openai_shape() -> None:
    w = ChatStreamWriter("m", include_usage=False)
    raw = w.events([Content("ok"), CallStart(0, "call_x", "f"), CallArguments(0, '{"a"')])
    content, start, args = (e["choices"][0]["delta"] for e in events(raw))
    assert content == {"content": "ok"}
    assert start == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_x",
                "type": "function",
                "function": {"name": "f", "arguments": ""},
            }
        ]
    }
    assert args == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}
    assert w.events([]) == b""
    done = events(w.finish(Finished("stop", 3, 4), called_tools=True))[0]["choices"][0]
    assert done["finish_reason"] == "tool_calls" and done["delta"] == {}
    # Cut short by the token budget: "length", even with a call under way.
    cut = events(w.finish(Finished("length", 3, 4), called_tools=True))[0]["choices"][0]
    assert cut["finish_reason"] == "length"

    call = ToolCall(id="call_x", function=ToolCallFunction(name="f", arguments="{}"))
    whole = chat_completion("m", None, Finished("stop", 3, 4), tool_calls=[call]).model_dump()
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    plain = chat_completion("m", "hi", Finished("stop", 3, 4)).model_dump(mode="json")
    assert "tool_calls" not in plain["choices"][0]["message"]
    assert plain["choices"][0]["finish_reason"] == "stop"
