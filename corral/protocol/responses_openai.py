"""OpenAI Responses <-> the worker's chat completions, both ways.

A Responses request becomes one chat completion: ``instructions`` the system
message, ``input`` items the messages (``function_call`` items the assistant's
``tool_calls``, ``function_call_output`` items ``tool`` messages), ``text.format``
the ``response_format``, ``max_output_tokens`` the ``max_tokens``. The answer comes
back as a Response: a ``message`` item with ``output_text``, then a ``function_call``
item per call; ``status`` "incomplete" with ``incomplete_details`` when
``max_output_tokens`` cut it short. Streams become the Responses event sequence,
each event numbered (``StreamTranslator``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidRequest, UnsupportedCapability
from corral.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    MediaPart,
    MessageItem,
    Part,
    ResponsesRequest,
)

CHAT_PATH = "/v1/chat/completions"


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# --- request ----------------------------------------------------------------------------


def chat_request(req: ResponsesRequest) -> dict[str, Any]:
    """The worker's chat completion body for a Responses request."""
    if req.previous_response_id is not None:
        raise InvalidRequest(
            "Responses are not stored here: send the whole conversation in input instead of "
            "previous_response_id.",
            param="previous_response_id",
        )
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for i, item in enumerate(req.input):
            _add_item(messages, item, f"input[{i}]")
    if not any(m["role"] != "system" for m in messages):
        raise InvalidRequest("input has no message for the model to answer.", param="input")
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if (value := getattr(req, name)) is not None:
            body[name] = value
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": _function(tool.model_dump(exclude_none=True))}
            for tool in req.tools
        ]
    if isinstance(req.tool_choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise InvalidRequest(
                "text.format of type 'json_schema' needs a schema.", param="text.format.schema"
            )
        schema = {"name": fmt.name or "output", "schema": fmt.schema_, "strict": fmt.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    return body


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    if isinstance(item, MessageItem):
        role = "system" if item.role == "developer" else item.role
        messages.append({"role": role, "content": _text(item.content, f"{where}.content")})
    elif isinstance(item, FunctionCallItem):
        call = {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # the same turn's text or calls
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif isinstance(item, FunctionCallOutputItem):
        output = _text(item.output, f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})


def _text(content: str | list[Part], where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, MediaPart):
            raise UnsupportedCapability(
                f"{part.type} content is not supported: these models read text only.",
                param=f"{where}[{j}]",
            )
        texts.append(part.text or part.refusal or "")
    return "".join(texts)


# --- response ---------------------------------------------------------------------------


def usage(openai_usage: dict[str, Any] | None) -> dict[str, Any]:
    u = openai_usage or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [_output_text(text)] if text or status != "in_progress" else [],
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


@dataclass
class Shell:
    """What a Response says beyond its output: the request's settings, echoed back."""

    req: ResponsesRequest
    id: str = field(default_factory=lambda: _id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage_: dict[str, Any] | None = None,
        incomplete: bool = False,
    ) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format if req.text and req.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": req.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None,
            "store": False,
            "temperature": req.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True)}
            if fmt
            else {"format": {"type": "text"}},
            "tool_choice": (
                req.tool_choice.model_dump()
                if isinstance(req.tool_choice, FunctionChoice)
                else req.tool_choice or "auto"
            ),
            "tools": [tool.model_dump(exclude_none=True) for tool in req.tools or []],
            "top_p": req.top_p,
            "truncation": "disabled",
            "usage": usage_,
            "metadata": req.metadata or {},
            "user": req.user,
        }


def response(body: dict[str, Any], req: ResponsesRequest) -> dict[str, Any]:
    """A whole Response from a whole chat completion."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    incomplete = choice.get("finish_reason") == "length"
    status = "incomplete" if incomplete else "completed"
    output = []
    if message.get("content"):
        output.append(message_item(_id("msg"), message["content"], status))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            call_item(
                _id("fc"),
                call.get("id") or _id("call"),
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    return Shell(req).response(status, output, usage(body.get("usage")), incomplete)


# --- streams ----------------------------------------------------------------------------

Event = tuple[str, dict[str, Any]]


@dataclass
class StreamTranslator:
    """The worker's chat chunks as the Responses API's stream events, numbered."""

    shell: Shell
    _seq: int = field(default=0, init=False)
    _output: list[dict[str, Any]] = field(default_factory=list, init=False)
    _open: dict[str, Any] | None = field(default=None, init=False)  # the item being written
    _reason: str | None = field(default=None, init=False)
    _usage: dict[str, Any] | None = field(default=None, init=False)

    def start(self) -> list[Event]:
        snapshot = self.shell.response("in_progress", [])
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[Event] = []
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason"):
                self._reason = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        events = self._close()
        incomplete = self._reason == "length"
        status = "incomplete" if incomplete else "completed"
        final = self.shell.response(status, self._output, usage(self._usage), incomplete)
        name = "response.incomplete" if incomplete else "response.completed"
        return [*events, self._event(name, response=final)]

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open["type"] != "message":
            events += self._close()
            item = message_item(_id("msg"), "", "in_progress")
            events += self._added(item)
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=len(self._output),
                    content_index=0,
                    part=_output_text(""),
                )
            )
            item["text"] = ""
        assert self._open is not None
        self._open["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._open["id"],
                output_index=len(self._output),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        function = call.get("function") or {}
        if call.get("id"):
            events += self._close()
            item = call_item(_id("fc"), call["id"], function.get("name") or "", "", "in_progress")
            events += self._added(item)
        if function.get("arguments") and self._open is not None:
            self._open["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._open["id"],
                    output_index=len(self._output),
                    delta=function["arguments"],
                )
            )
        return events

    def _added(self, item: dict[str, Any]) -> list[Event]:
        self._open = item
        return [
            self._event(
                "response.output_item.added", output_index=len(self._output), item=dict(item)
            )
        ]

    def _close(self) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = len(self._output)
        events: list[Event] = []
        status = "incomplete" if self._reason == "length" else "completed"
        if item["type"] == "message":
            text = item.pop("text")
            done = message_item(item["id"], text, status)
            events += [
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=_output_text(text),
                ),
            ]
        else:
            done = {**item, "status": "completed"}
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        self._output.append(done)
        events.append(self._event("response.output_item.done", output_index=index, item=done))
        return events

    def _event(self, kind: str, /, **data: Any) -> Event:
        event = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return kind, event
