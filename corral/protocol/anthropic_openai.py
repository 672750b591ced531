"""Anthropic Messages <-> the worker's OpenAI chat completions, both ways.

A Messages request becomes one chat completion: ``system`` the first message,
``tool_use`` blocks the assistant's ``tool_calls``, ``tool_result`` blocks ``tool``
messages answering them, ``tools``/``tool_choice`` OpenAI's (``any`` is "required").
The answer comes back as Anthropic writes it: content blocks, ``stop_reason``
(``end_turn``, ``max_tokens``, ``stop_sequence`` with the sequence, ``tool_use``) and
usage, where ``input_tokens`` counts only what the prompt cache did not serve (that
is ``cache_read_input_tokens``), as Anthropic counts them. Streams become Anthropic's
events one chunk at a time (``StreamTranslator``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.errors import InvalidRequest, UnsupportedCapability
from corral.protocol.anthropic import (
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)

CHAT_PATH = "/v1/chat/completions"


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


# --- request ----------------------------------------------------------------------------


def chat_request(req: MessagesRequest) -> dict[str, Any]:
    """The worker's chat completion body for a Messages request."""
    if req.thinking is not None and req.thinking.type == "enabled":
        # "adaptive" and "between_tools" leave thinking to the model: these do not think.
        raise UnsupportedCapability(
            f"The model '{req.model}' does not support extended thinking.", param="thinking"
        )
    messages: list[dict[str, Any]] = []
    system = _system_text(req.system)
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(req.messages):
        messages += _messages(message, i)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": req.stream,
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p", "top_k"):
        if (value := getattr(req, name)) is not None:
            body[name] = value
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    if req.tools:
        body["tools"] = [_tool(i, tool) for i, tool in enumerate(req.tools)]
    if req.tool_choice is not None:
        body.update(_tool_choice(req))
    if req.output_config is not None and req.output_config.format is not None:
        schema = req.output_config.format.schema_
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    return body


def _system_text(system: str | list[TextBlock] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n\n".join(block.text for block in system)


def _messages(message: Message, index: int) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: tool results come first, as ``tool``
    messages, then the rest of the turn."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        where = f"messages[{index}].content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            raise UnsupportedCapability(
                f"{block.type} blocks are not supported: these models read text only.",
                param=where,
            )
        elif isinstance(block, ToolUseBlock):
            if message.role != "assistant":
                raise InvalidRequest("tool_use blocks belong to assistant turns.", param=where)
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": json.dumps(block.input)},
                }
            )
        elif isinstance(block, ToolResultBlock):
            if message.role != "user":
                raise InvalidRequest("tool_result blocks belong to user turns.", param=where)
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id,
                    "content": _result_text(block, where),
                }
            )
        elif isinstance(block, ThinkingBlock):
            continue
    if calls:
        out.append({"role": "assistant", "content": "".join(texts) or None, "tool_calls": calls})
    elif texts or not out:
        out.append({"role": message.role, "content": "".join(texts)})
    return out


def _result_text(block: ToolResultBlock, where: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts = []
        for item in block.content:
            if isinstance(item, ImageBlock):
                raise UnsupportedCapability(
                    "Images in tool results are not supported: these models read text only.",
                    param=where,
                )
            parts.append(item.text)
        text = "\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def _tool(index: int, tool: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(req: MessagesRequest) -> dict[str, Any]:
    choice = req.tool_choice
    assert choice is not None
    out: dict[str, Any] = {}
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type 'tool' needs a name.", param="tool_choice")
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


# --- response ---------------------------------------------------------------------------


def usage(openai_usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI's usage in Anthropic's terms: cached prompt tokens are reported apart."""
    u = openai_usage or {}
    prompt = int(u.get("prompt_tokens") or 0)
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": int(u.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def stop_reason(choice: dict[str, Any]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for an OpenAI choice."""
    finish = choice.get("finish_reason")
    if finish == "tool_calls":
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    matched = choice.get("stop_reason")
    if isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def message_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A whole Messages answer from a whole chat completion."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments") or ""),
            }
        )
    reason, sequence = stop_reason(choice)
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(body.get("usage")),
    }


# --- streams ----------------------------------------------------------------------------

Event = tuple[str, dict[str, Any]]  # (event name, data)


@dataclass
class StreamTranslator:
    """The worker's chat chunks as Anthropic's stream events, one chunk at a time.

    ``start`` is ``message_start`` and a ``ping``; text opens a text block and fills it
    with ``text_delta``s; a tool call closes the open block and opens a ``tool_use``
    block, filled with ``input_json_delta``s; ``finish`` closes the last block and
    sends ``message_delta`` (stop reason, usage) and ``message_stop``.
    """

    model: str
    id: str = field(default_factory=new_message_id)
    _index: int = field(default=-1, init=False)
    _open: str | None = field(default=None, init=False)  # type of the open block
    _calls: dict[int, int] = field(default_factory=dict, init=False)  # call index -> block
    _choice: dict[str, Any] = field(default_factory=dict, init=False)
    _usage: dict[str, Any] | None = field(default=None, init=False)

    def start(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(None),
        }
        return [
            ("message_start", {"type": "message_start", "message": message}),
            ("ping", {"type": "ping"}),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[Event] = []
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._open != "text":
                    events += self._open_block({"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason"):
                self._choice = choice
        return events

    def finish(self) -> list[Event]:
        events = self._close_block()
        reason, sequence = stop_reason(self._choice)
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage(self._usage),
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        function = call.get("function") or {}
        if call.get("id"):  # the first delta of a call: id and name
            events += self._open_block(
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": function.get("name") or "",
                    "input": {},
                }
            )
            self._calls[int(call.get("index") or 0)] = self._index
        if function.get("arguments"):
            events.append(
                self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
            )
        return events

    def _open_block(self, block: dict[str, Any]) -> list[Event]:
        events = self._close_block()
        self._index += 1
        self._open = block["type"]
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        events.append(("content_block_start", start))
        return events

    def _close_block(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> Event:
        data = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return ("content_block_delta", data)
