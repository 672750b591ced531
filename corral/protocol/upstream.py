"""Talking to a worker that is someone else's OpenAI-compatible server.

Corral's own workers understand the gateway's handoff headers (``handoff.py``): they
end every stream with its token counts and answer under the model's Corral name. A
foreign server (llama.cpp's ``llama-server``, vLLM, SGLang, TGI, started by the
``command`` or ``vllm`` engine) does neither, so the gateway translates on its way
through, and only for those workers:

- **requests**: ``model`` becomes the name the server knows (``served_name``), and a
  stream asks for ``stream_options.include_usage`` (the gateway always needs the
  counts: limits, metrics, the request log);
- **answers**: every ``"model": "..."`` becomes the Corral name the client asked for,
  and the usage-only chunk the client did not ask for becomes the ``: usage`` comment
  the gateway already reads and removes, so the client sees exactly what a Corral
  worker would have sent. A server that sends no usage at all in a stream
  (``llama_cpp.server``) gets its completion tokens counted from its chunks (these
  servers send one token a chunk), in a comment marked ``estimated``, for the
  gateway's own accounting (token limits, metrics) only: clients never see a count
  the server did not give.

The rewrite works on bytes, one complete SSE event at a time: a ``"model"`` key
cannot occur inside a JSON string (its quotes would be escaped), so a pattern finds
exactly the keys, without decoding the content of every chunk.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from corral.protocol.handoff import usage_comment

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_DELTA_TEXT = re.compile(rb'"(?:content|text)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[\s*\{')


@dataclass(frozen=True)
class ForeignServer:
    """A worker that speaks OpenAI's API but not Corral's handoff."""

    served_name: str | None = None  # the model name it knows; None: it ignores the field


@dataclass(frozen=True)
class Translation:
    """How one request was changed, so that its answer can be changed back."""

    model: bytes  # the Corral name, as a JSON string literal
    hide_usage: bool  # the client did not ask for the usage chunk: hide it
    timings: bool = False  # the gateway asked for engine timings (Ollama's durations)


def translate_request(server: ForeignServer, body: bytes, model: str) -> tuple[bytes, Translation]:
    """``body`` as ``server`` needs it; the translation to undo in its answer. A body
    that is not a JSON object goes as it is: the server answers it as it would."""
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        return body, Translation(json.dumps(model).encode(), hide_usage=False)
    translation = Translation(
        json.dumps(model).encode(), hide_usage=False, timings=request.get("timings") is True
    )
    if server.served_name is not None:
        request["model"] = server.served_name
    if request.get("stream") is True:
        options = request.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if not options.get("include_usage"):
            options["include_usage"] = True
            request["stream_options"] = options
            translation = Translation(translation.model, True, translation.timings)
    return json.dumps(request, separators=(",", ":")).encode(), translation


def rename_model(data: bytes, translation: Translation) -> bytes:
    """Every ``"model"`` key of a JSON body or event set to the Corral name."""
    return _MODEL_FIELD.sub(b'"model":' + translation.model.replace(b"\\", b"\\\\"), data)


def translate_body(data: bytes, translation: Translation) -> bytes:
    """A whole answer (or one SSE event's) as a Corral worker would have sent it."""
    data = rename_model(data, translation)
    if translation.timings and b'"timings"' in data and b'"usage"' in data:
        data = _adopt_timings(data)
    return data


def _adopt_timings(data: bytes) -> bytes:
    """llama-server's timings (top level, in ms) as Corral's (in ``usage``, in ns),
    which Ollama's durations are made of."""
    prefix = b"data: " if data.startswith(b"data:") else b""
    try:
        answer = json.loads(data[len(prefix) :] if prefix else data)
        timings, usage = answer["timings"], answer["usage"]
        usage.setdefault(
            "timings",
            {
                "prompt_ns": int(float(timings["prompt_ms"]) * 1e6),
                "generation_ns": int(float(timings["predicted_ms"]) * 1e6),
            },
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return data
    return prefix + json.dumps(answer, separators=(",", ":")).encode()


class StreamTranslator:
    """An SSE stream from a foreign server, rewritten event by event. Bytes arrive in
    any pieces; an event is passed on when its blank line has arrived."""

    def __init__(self, translation: Translation) -> None:
        self._translation = translation
        self._pending = b""
        self._usage_seen = False
        self._chunks = 0  # events that carry generated text or tool calls

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        if data.endswith(b"\r"):  # perhaps half of a CRLF: wait for the rest
            self._pending = data
            return b""
        # Lines end in CRLF in some servers' streams (sse-starlette's): passed on as
        # LF, the gateway's own event parsing reads LF.
        data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._pending = data
            return b""
        self._pending = data[end + 2 :]
        events = data[: end + 2].split(b"\n\n")[:-1]
        return b"".join(self._event(event) + b"\n\n" for event in events)

    def close(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest, self._pending = self._pending.replace(b"\r\n", b"\n"), b""
        return self._event(rest) if rest.strip() else rest

    def _event(self, event: bytes) -> bytes:
        event = translate_body(event, self._translation)
        if b'"usage"' in event and _USAGE_OBJECT.search(event):
            self._usage_seen = True
        elif _DELTA_TEXT.search(event):
            self._chunks += 1
        elif event.strip() == b"data: [DONE]" and not self._usage_seen and self._chunks:
            estimate = {"prompt_tokens": 0, "completion_tokens": self._chunks, "estimated": True}
            return usage_comment(estimate) + event
        if self._translation.hide_usage and b'"usage"' in event and _EMPTY_CHOICES.search(event):
            # The usage-only chunk the gateway asked for: a comment the gateway reads
            # (and removes), as Corral's own workers send it.
            data = b"".join(
                line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")
            )
            try:
                usage = json.loads(data).get("usage")
            except (ValueError, AttributeError):
                return event
            return usage_comment(usage)[:-2]  # the caller adds the blank line
        return event
