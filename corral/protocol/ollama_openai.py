"""Pure translation between Ollama's API and the workers' OpenAI-shaped API.

Requests go one way (an Ollama chat or generate request becomes the body of a
worker's ``/v1/chat/completions`` or ``/v1/completions``), answers the other (a
worker's response, or its stream of chunks, becomes Ollama's JSON or NDJSON
lines). There is no second path to the engine: whatever the worker can do, both
APIs get. Every function here is a function of its arguments (times included), so
the rules are unit-tested without a server.

Options (``api/types.go``), and what becomes of each:

- samplers the worker has: ``temperature``, ``top_k``, ``top_p``, ``min_p``,
  ``seed``, ``stop``, ``repeat_penalty``, ``repeat_last_n``, ``presence_penalty``,
  ``frequency_penalty``; ``num_predict`` becomes ``max_tokens`` (``-1``, no limit,
  ``-2``, fill the context, and ``0``, no limit in Ollama's runner, all generate
  until the context is full: Corral never shifts the context). Unset ones take
  Ollama's defaults (``DEFAULTS``), so a request samples as it would on Ollama;
- samplers it lacks (``typical_p``, ``tfs_z``, ``mirostat``): their neutral value
  is accepted (clients send full option sets), any other is a 400, never ignored;
- ``LOAD_OPTIONS`` tune how Ollama loads a model (threads, GPU layers, context
  size, mmap). Corral loads a model once for every client, with the server's
  settings (``CORRAL_CONTEXT_LENGTH``, ``CORRAL_THREADS``...), so these are
  accepted and ignored. So are ``IGNORED``: ``num_keep`` (context shifting, which
  Corral never does), ``penalize_newline`` (dropped by Ollama itself) and the
  tuning of mirostat (which is off).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from corral.errors import EngineError, InvalidRequest, UnsupportedCapability
from corral.protocol import ollama_template
from corral.protocol.ollama import ChatRequest, GenerateRequest, Message, Options

# Ollama's defaults (api/types.go DefaultOptions) for the samplers it sets.
DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
}
SAMPLERS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
)
NEUTRAL = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0}
LOAD_OPTIONS = frozenset(
    {
        "numa",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
    }
)
# Tuning of samplers the engine lacks, and context shifting, which Corral never does.
IGNORED = frozenset({"mirostat_tau", "mirostat_eta", "num_keep", "penalize_newline"})
MAPPED = ("seed", "stop", "num_predict")  # translated by ``sampling`` one by one
CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
SCHEMA_NAME = "ollama_format"

Kind = Literal["chat", "generate"]


# --- requests -----------------------------------------------------------------------


def sampling(options: Options | None) -> dict[str, Any]:
    """The worker's sampling fields for Ollama ``options`` (see the module docstring)."""
    given = options.given() if options is not None else {}
    for name, neutral in NEUTRAL.items():
        if name in given and given[name] != neutral:
            raise InvalidRequest(
                f"option {name!r} is not supported by Corral's llama.cpp sampling; "
                f"leave it out or set it to {neutral}.",
                param=f"options.{name}",
            )
    out = {name: given.get(name, DEFAULTS.get(name)) for name in SAMPLERS}
    out = {name: value for name, value in out.items() if value is not None}
    seed = given.get("seed")
    if seed is not None and seed >= 0:  # Ollama's -1: a random seed
        out["seed"] = seed
    stop = given.get("stop")
    if stop:
        out["stop"] = [stop] if isinstance(stop, str) else stop
    limit = given.get("num_predict")
    out["max_tokens"] = limit if limit is not None and limit > 0 else None
    return out


def chat_request(req: ChatRequest) -> dict[str, Any]:
    """The worker's ``/v1/chat/completions`` body for an Ollama chat request."""
    refuse_unsupported(req)
    messages = openai_messages(req.model, req.messages)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    body.update(_common(req))
    if req.tools:
        body["tools"] = [tool.model_dump(exclude_none=True) for tool in req.tools]
    return body


def generate_request(req: GenerateRequest) -> tuple[str, dict[str, Any]]:
    """The worker path and body for an Ollama generate request.

    The model's own chat template applies (a system and a user message, as Ollama
    renders ``/api/generate``) unless ``raw`` is set or a ``template`` is given;
    then the prompt goes to ``/v1/completions`` as is, or as the template renders it.
    """
    refuse_unsupported(req)
    if req.suffix:
        raise UnsupportedCapability(
            f'"{req.model}" does not support insert: Corral has no fill-in-the-middle '
            "(suffix) yet.",
            param="suffix",
        )
    if req.images:
        raise _no_images(req.model, "images")
    if req.raw and (req.template or req.system or req.context):
        raise InvalidRequest("raw mode does not support template, system, or context", param="raw")
    common = _common(req)
    if req.raw or req.template:
        # Completions take no response_format; the same constraint goes as json_schema.
        fmt = common.pop("response_format", None)
        if fmt is not None:
            common["json_schema"] = (
                fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else {"type": "object"}
            )
        prompt = req.prompt
        if req.template:
            prompt = ollama_template.render(
                req.template, system=req.system or "", prompt=req.prompt
            )
        return COMPLETION_PATH, {"model": req.model, "prompt": prompt, **common}
    messages = [{"role": "user", "content": req.prompt}]
    if req.system:
        messages.insert(0, {"role": "system", "content": req.system})
    return CHAT_PATH, {"model": req.model, "messages": messages, **common}


def refuse_unsupported(req: ChatRequest | GenerateRequest) -> None:
    """Clear 400s, as Ollama gives, for what these models cannot do."""
    if req.think not in (None, False, ""):
        raise UnsupportedCapability(f'"{req.model}" does not support thinking', param="think")
    if req.logprobs:
        raise InvalidRequest("logprobs are not supported yet.", param="logprobs")


def _common(req: ChatRequest | GenerateRequest) -> dict[str, Any]:
    body = sampling(req.options)
    body["stream"] = req.stream
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    body["timings"] = True  # engine timings in the usage: Ollama's durations
    fmt = response_format(req.format)
    if fmt is not None:
        body["response_format"] = fmt
    return body


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama's ``format``: ``"json"`` is JSON mode; an object is a JSON schema."""
    if isinstance(fmt, dict):
        return {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": fmt, "strict": True},
        }
    return {"type": "json_object"} if fmt == "json" else None


def openai_messages(model: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI's: tool calls get ids (arguments as JSON strings) and
    each ``tool`` result is tied to the call it answers: by ``tool_call_id`` if the
    client sent one, else by ``tool_name`` (without one, to the next call in order)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
    for i, message in enumerate(messages):
        if message.images:
            raise _no_images(model, f"messages[{i}].images")
        item: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.role == "assistant" and message.tool_calls:
            pending = []
            calls = []
            for j, call in enumerate(message.tool_calls):
                call_id = call.id or f"call_{i}_{j}"
                pending.append((call_id, call.function.name))
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": json.dumps(call.function.arguments),
                        },
                    }
                )
            item["tool_calls"] = calls
        elif message.role == "tool":
            answered = message.tool_call_id or _answered(pending, message.tool_name)
            if answered is not None:
                item["tool_call_id"] = answered
            if message.tool_name:
                item["name"] = message.tool_name
        out.append(item)
    return out


def _answered(pending: list[tuple[str, str]], name: str | None) -> str | None:
    """The id of the pending call a tool result answers (and mark it answered)."""
    for k, (call_id, call_name) in enumerate(pending):
        if name is None or call_name == name:
            del pending[k]
            return call_id
    return None


def _no_images(model: str, param: str) -> UnsupportedCapability:
    return UnsupportedCapability(
        f'"{model}" does not support images: it is a text-only model (Corral serves no '
        "vision models yet).",
        param=param,
    )


def embed_inputs(value: str | list[str]) -> list[str]:
    """``input`` as a list; an empty string is no input at all (Ollama: just load)."""
    if isinstance(value, str):
        return [value] if value else []
    return value


def embed_request(
    model: str, inputs: list[str], dimensions: int | None, truncate: bool = True
) -> dict[str, Any]:
    """Ollama cuts an input longer than the model's context unless ``truncate`` is
    false (then it is a 400): the worker's ``truncate`` extension does the same."""
    body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    if truncate:
        body["truncate"] = True
    return body


# --- answers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Marks:
    """Moments of one request in the gateway (``time.perf_counter_ns``): when it
    arrived and when its model was ready and a slot granted."""

    start_ns: int
    granted_ns: int


def timestamp(ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds (trailing zeros trimmed), as Go writes times."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base + f".{nanos:09d}".rstrip("0").rstrip(".") + "Z"


def metrics(
    usage: Mapping[str, Any] | None, marks: Marks, end_ns: int, first_ns: int | None = None
) -> dict[str, int]:
    """Ollama's counts and durations (ns). ``load_duration`` is the wait for the model
    (loading it, or a free slot); the eval durations are the engine's own timings.
    ``prompt_eval_count`` is the whole prompt, a cached prefix included, as Ollama
    counts it (clients track context use by it); its duration is what prefill took.

    An engine that gives no timings (a foreign server: vLLM, llama_cpp.server) gets
    the gateway's: prefill until the first chunk (``first_ns``), generation after it;
    without a first chunk, all of it is generation. Never zero where tokens were made,
    since clients divide by it (``ollama run --verbose``'s eval rate)."""
    usage = usage or {}
    timings = usage.get("timings") or {}
    if timings:
        prompt_ns, generation_ns = (
            int(timings.get("prompt_ns", 0)),
            int(timings.get("generation_ns", 0)),
        )
    else:
        split = first_ns if first_ns is not None else marks.granted_ns
        prompt_ns, generation_ns = max(0, split - marks.granted_ns), max(0, end_ns - split)
    return {
        "total_duration": end_ns - marks.start_ns,
        "load_duration": marks.granted_ns - marks.start_ns,
        "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
        "prompt_eval_duration": prompt_ns,
        "eval_count": int(usage.get("completion_tokens", 0)),
        "eval_duration": generation_ns,
    }


def done_reason(finish_reason: str | None) -> str:
    """Ollama says ``length`` when the token limit stopped it, else ``stop`` (a tool
    call included)."""
    return "length" if finish_reason == "length" else "stop"


def tool_calls(calls: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments a JSON string) as Ollama's (arguments an object)."""
    out = []
    for call in calls:
        function = call.get("function") or {}
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise EngineError(
                f"The model called {function.get('name')!r} with arguments that are not a "
                f"JSON object: {str(raw)[:200]!r}"
            )
        out.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


def chat_response(
    body: Mapping[str, Any], *, model: str, created_at: str, marks: Marks, end_ns: int
) -> dict[str, Any]:
    """A worker's whole chat completion as Ollama's ``/api/chat`` answer."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    reply: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        reply["tool_calls"] = tool_calls(message["tool_calls"])
    return {
        "model": model,
        "created_at": created_at,
        "message": reply,
        "done_reason": done_reason(choice.get("finish_reason")),
        "done": True,
        **metrics(body.get("usage"), marks, end_ns),
    }


def generate_response(
    body: Mapping[str, Any], *, model: str, created_at: str, marks: Marks, end_ns: int
) -> dict[str, Any]:
    """A worker's whole chat completion or completion as ``/api/generate``'s answer.

    No ``context``: Ollama deprecated it, and a client that sends it back gets the
    same answer without it (it is accepted and ignored)."""
    choice = body["choices"][0]
    return {
        "model": model,
        "created_at": created_at,
        "response": _text(choice, "message"),
        "done": True,
        "done_reason": done_reason(choice.get("finish_reason")),
        **metrics(body.get("usage"), marks, end_ns),
    }


def _text(choice: Mapping[str, Any], key: Literal["message", "delta"]) -> str:
    """The text of a chat choice (``message``/``delta``) or a completion choice."""
    if "text" in choice:
        return str(choice["text"] or "")
    return str((choice.get(key) or {}).get("content") or "")


@dataclass
class StreamTranslator:
    """A worker's stream of chunks as Ollama's NDJSON lines, chunk by chunk.

    Text becomes ``done: false`` lines as it comes; streamed tool calls are joined
    and sent in one line when the choice finishes; ``final`` is the ``done: true``
    line with the usage (from the worker's last chunk) and the durations.
    """

    kind: Kind
    model: str
    marks: Marks
    _reason: str | None = field(default=None, init=False)
    _usage: Mapping[str, Any] | None = field(default=None, init=False)
    _calls: dict[int, dict[str, str]] = field(default_factory=dict, init=False)

    def feed(self, chunk: Mapping[str, Any], created_at: str) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        lines = []
        for choice in (chunk.get("choices") or [])[:1]:
            text = _text(choice, "delta")
            if text:
                lines.append(self._line(text, created_at))
            self._join_calls(choice)
            if choice.get("finish_reason"):
                self._reason = choice["finish_reason"]
                if self._calls:
                    calls = [self._calls[k] for k in sorted(self._calls)]
                    self._calls = {}
                    lines.append(self._line("", created_at, calls))
        return lines

    def final(self, created_at: str, end_ns: int, first_ns: int | None = None) -> dict[str, Any]:
        reason = done_reason(self._reason)
        head: dict[str, Any] = {"model": self.model, "created_at": created_at}
        if self.kind == "generate":  # each in the field order of Ollama's own replies
            head.update(response="", done=True, done_reason=reason)
        else:
            head.update(message={"role": "assistant", "content": ""}, done_reason=reason)
            head["done"] = True
        return {**head, **metrics(self._usage, self.marks, end_ns, first_ns)}

    def _line(
        self, text: str, created_at: str, calls: list[dict[str, str]] | None = None
    ) -> dict[str, Any]:
        if self.kind == "generate":
            return {"model": self.model, "created_at": created_at, "response": text, "done": False}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = tool_calls([{"function": c} for c in calls])
        return {"model": self.model, "created_at": created_at, "message": message, "done": False}

    def _join_calls(self, choice: Mapping[str, Any]) -> None:
        for piece in (choice.get("delta") or {}).get("tool_calls") or []:
            call = self._calls.setdefault(int(piece.get("index", 0)), {"name": "", "arguments": ""})
            function = piece.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""


def embed_response(
    body: Mapping[str, Any], *, model: str, marks: Marks, end_ns: int
) -> dict[str, Any]:
    """A worker's embeddings as ``/api/embed``'s answer."""
    data = sorted(body.get("data") or [], key=lambda item: item.get("index", 0))
    usage = body.get("usage") or {}
    return {
        "model": model,
        "embeddings": [item["embedding"] for item in data],
        "total_duration": end_ns - marks.start_ns,
        "load_duration": marks.granted_ns - marks.start_ns,
        "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
    }


def legacy_embedding(body: Mapping[str, Any]) -> dict[str, Any]:
    """A worker's embedding of one prompt as the legacy ``/api/embeddings`` answer."""
    data = body.get("data") or []
    return {"embedding": data[0]["embedding"] if data else []}


def empty_reply(kind: Kind, model: str, created_at: str, reason: str) -> dict[str, Any]:
    """The answer to a request with nothing to generate: it loaded (``reason`` "load")
    or unloaded ("unload") the model."""
    if kind == "generate":
        return {
            "model": model,
            "created_at": created_at,
            "response": "",
            "done": True,
            "done_reason": reason,
        }
    return {
        "model": model,
        "created_at": created_at,
        "message": {"role": "assistant", "content": ""},
        "done_reason": reason,
        "done": True,
    }
