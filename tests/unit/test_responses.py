import json

from corral.engines.base import Finished
from corral.errors import WorkerCrashed
from corral.worker.responses import ChatStreamWriter, CompletionStreamWriter, error_event


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
    finish, usage = events(w.finish(Finished("stop", 3, 4)))
    assert finish["usage"] is None
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


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
