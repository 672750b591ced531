"""Tool calls in generated text: the schema that forces one, and parsing them out of a reply.

A reply carries tool calls in one of two ways:

- forced (``tool_choice`` "required" or a named function): a grammar from
  ``tool_call_schema`` holds the whole output to one JSON object, ``{"name": ...,
  "arguments": {...}}`` with the name first, so ``ForcedCall`` can announce the call
  as soon as its name is complete and stream the arguments as they are generated;
- free (``tool_choice`` "auto"): the model writes calls in its family's convention,
  which its chat template shows (``call_format``):

  - Hermes/Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` among
    its text; ``TaggedCalls`` parses a block when it closes;
  - Llama 3.x: the whole reply is ``{"name": ..., "parameters": {...}}`` (after an
    optional ``<|python_tag|>``), several separated by ``;``;
  - Mistral: the whole reply is ``[TOOL_CALLS]`` and then a JSON list of calls, or
    (newer templates) ``name[ARGS]{...}`` per call.

  ``LeadingCalls`` holds a reply of the last two kinds back while it can still be a
  call and parses it at the end. A call that does not parse, or names an unknown
  tool, stays text, so nothing the model wrote is lost.

Parsers turn text, piece by piece, into events (``Content``, ``CallStart``,
``CallArguments``) that map one to one onto OpenAI's streamed deltas; ``collect``
folds the same events into a whole message, so both forms always agree.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from corral.protocol.openai import ToolCall, ToolCallFunction

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str


ReplyEvent = Content | CallStart | CallArguments


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ReplyParser(ABC):
    """Splits a reply's text into content and tool calls as it arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.limit: int | None = None  # 1 with parallel_tool_calls false: later calls dropped

    @abstractmethod
    def feed(self, text: str) -> list[ReplyEvent]:
        """The events that ``text``, the next piece of the reply, completes."""

    @abstractmethod
    def finish(self) -> list[ReplyEvent]:
        """The reply ended (stopped or cut short): whatever is still held back."""

    def _start(self, name: str) -> CallStart:
        self.calls += 1
        return CallStart(self.calls - 1, new_call_id(), name)


class PlainReply(ReplyParser):
    """No tools: all text is content."""

    def feed(self, text: str) -> list[ReplyEvent]:
        return [Content(text)] if text else []

    def finish(self) -> list[ReplyEvent]:
        return []


class ForcedCall(ReplyParser):
    """The whole reply is one grammar-constrained call object, name first."""

    _HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:')

    def __init__(self) -> None:
        super().__init__()
        self._head = ""
        self._value: _ValueScanner | None = None

    def feed(self, text: str) -> list[ReplyEvent]:
        if self._value is not None:
            return self._arguments(text)
        self._head += text
        match = self._HEAD.match(self._head)
        if match is None:
            return []
        self._value = _ValueScanner()
        return [
            self._start(json.loads(match.group(1))),
            *self._arguments(self._head[match.end() :]),
        ]

    def finish(self) -> list[ReplyEvent]:
        if self._value is None and self._head:
            return [Content(self._head)]  # cut short before the name was complete
        return []

    def _arguments(self, text: str) -> list[ReplyEvent]:
        assert self._value is not None
        piece = self._value.feed(text)
        return [CallArguments(0, piece)] if piece else []


class TaggedCalls(ReplyParser):
    """Free text with ``<tool_call>`` blocks (Hermes/Qwen). Calls to unknown tools stay text.

    Whitespace around the blocks (and at either end of the content) is dropped, so a
    reply that only calls tools has no content, not a few newlines.
    """

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__()
        self._names = set(names)
        self._text = ""  # outside a block, held back: it may begin an opening tag
        self._block: str | None = None  # inside a block, until its closing tag
        self._space = ""  # trailing whitespace of the content, sent only if more follows
        self._sent = False  # any content yet (leading whitespace is dropped too)
        self._gap = ""  # whitespace before the current block

    def feed(self, text: str) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        if self._block is None:
            self._text += text
        else:
            self._block += text
        while True:
            if self._block is None:
                start = self._text.find(OPEN_TAG)
                if start < 0:
                    keep = _partial_suffix(self._text, OPEN_TAG)
                    events += self._content(self._text[: len(self._text) - keep])
                    self._text = self._text[len(self._text) - keep :]
                    return events
                events += self._content(self._text[:start])
                self._gap, self._space = self._space, ""  # kept if the block is not a call
                self._block, self._text = self._text[start + len(OPEN_TAG) :], ""
            else:
                end = self._block.find(CLOSE_TAG)
                if end < 0:
                    return events
                events += self._call(self._block[:end])
                self._text, self._block = self._block[end + len(CLOSE_TAG) :], None

    def finish(self) -> list[ReplyEvent]:
        if self._block is not None:  # never closed: models often end right after the JSON
            block, self._block = self._block, None
            return self._call(block, closed=False)
        text, self._text = self._text, ""
        return self._content(text)

    def _content(self, text: str) -> list[ReplyEvent]:
        text = self._space + text
        kept = text.rstrip()
        self._space = text[len(kept) :]
        if not kept.strip():
            return []
        if not self._sent:
            kept, self._sent = kept.lstrip(), True
        return [Content(kept)]

    def _call(self, block: str, closed: bool = True) -> list[ReplyEvent]:
        call = _parse_call(block)
        if call is None or call[0] not in self._names:
            return self._content(self._gap + OPEN_TAG + block + (CLOSE_TAG if closed else ""))
        if self.limit is not None and self.calls >= self.limit:
            return []  # parallel_tool_calls false: the first call is the reply's only one
        name, arguments = call
        return [self._start(name), CallArguments(self.calls - 1, arguments)]


CallFormat = Literal["hermes", "llama3", "mistral"]
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"


def call_format(template_source: str) -> CallFormat:
    """The convention a chat template teaches its model for tool calls."""
    if MISTRAL_CALLS in template_source:
        return "mistral"
    if PYTHON_TAG in template_source or (
        "<|start_header_id|>" in template_source and "ipython" in template_source
    ):
        return "llama3"
    return "hermes"


def auto_parser(fmt: CallFormat, names: Iterable[str], single: bool = False) -> ReplyParser:
    """The parser for replies that may call ``names`` (``tool_choice`` "auto"); with
    ``single`` (``parallel_tool_calls`` false) only the first call counts."""
    parser: ReplyParser = TaggedCalls(names) if fmt == "hermes" else LeadingCalls(names, fmt)
    parser.limit = 1 if single else None
    return parser


class LeadingCalls(ReplyParser):
    """Replies that are text, or from their start nothing but calls (Llama 3.x, Mistral).

    Text streams as soon as the reply cannot be a call any more; a reply that begins
    like one is held and parsed when it ends, and stays text if it is not a valid call
    of known tools.
    """

    def __init__(self, names: Iterable[str], fmt: CallFormat) -> None:
        super().__init__()
        self._names = set(names)
        self._fmt = fmt
        self._held = ""
        self._text = False  # decided: the reply is text

    def feed(self, text: str) -> list[ReplyEvent]:
        if self._text:
            return [Content(text)] if text else []
        self._held += text
        head = self._held.lstrip()
        if not head or any(m.startswith(head) or head.startswith(m) for m in self._markers()):
            return []
        self._text = True
        held, self._held = self._held, ""
        return [Content(held)]

    def finish(self) -> list[ReplyEvent]:
        held, self._held = self._held, ""
        if self._text or not held:
            return []
        calls = self._parse(held.strip())
        if not calls or any(name not in self._names for name, _ in calls):
            return [Content(held)]
        events: list[ReplyEvent] = []
        for name, arguments in calls[: self.limit]:
            events += [self._start(name), CallArguments(self.calls - 1, arguments)]
        return events

    def _markers(self) -> tuple[str, ...]:
        return (MISTRAL_CALLS,) if self._fmt == "mistral" else (PYTHON_TAG, "{")

    def _parse(self, text: str) -> list[tuple[str, str]] | None:
        if self._fmt == "mistral":
            return _mistral_calls(text)
        return _json_calls(text.removeprefix(PYTHON_TAG), separators=";")


def _json_calls(text: str, separators: str = "") -> list[tuple[str, str]] | None:
    """Calls written as JSON: one object, objects one after another, or a list of them."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    rest = text.strip()
    while rest:
        try:
            value, end = decoder.raw_decode(rest)
        except json.JSONDecodeError:
            return None
        values += value if isinstance(value, list) else [value]
        rest = rest[end:].lstrip().lstrip(separators).lstrip()
    calls = [_call_of(value) for value in values]
    return None if not calls or any(c is None for c in calls) else calls  # type: ignore[return-value]


def _mistral_calls(text: str) -> list[tuple[str, str]] | None:
    if not text.startswith(MISTRAL_CALLS):
        return None
    calls: list[tuple[str, str]] = []
    for part in text.split(MISTRAL_CALLS)[1:]:
        part = part.strip()
        if MISTRAL_ARGS in part:  # name[ARGS]{...}
            name, _, arguments = part.partition(MISTRAL_ARGS)
            call = _call_of({"name": name.strip(), "arguments": _loads(arguments)})
            if call is None:
                return None
            calls.append(call)
        else:
            found = _json_calls(part)
            if found is None:
                return None
            calls += found
    return calls or None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _parse_call(block: str) -> tuple[str, str] | None:
    """``(name, arguments as JSON text)`` from a block's JSON, or None if it is not a call."""
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        return None
    return _call_of(value)


def _call_of(value: Any) -> tuple[str, str] | None:
    """``(name, arguments as JSON text)`` from a decoded call, or None if it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models encode the arguments twice
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)


class _ValueScanner:
    """Passes through the text of one JSON value, piece by piece, and nothing after it."""

    def __init__(self) -> None:
        self.done = False
        self._started = False
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> str:
        out = []
        for ch in text:
            if self.done:
                break
            if not self._started:
                if ch.isspace():
                    continue
                self._started = True
            elif self._depth == 0 and not self._in_string and (ch in ",}]" or ch.isspace()):
                self.done = True  # the end of a bare number, true, false or null
                break
            out.append(ch)
            self._step(ch)
        return "".join(out)

    def _step(self, ch: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
                self.done = self._depth == 0
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            self.done = self._depth == 0


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def collect(parser: ReplyParser, text: str) -> tuple[str | None, list[ToolCall]]:
    """A whole reply's content and tool calls; content is None when there are only calls."""
    content: list[str] = []
    calls: list[ToolCall] = []
    for event in [*parser.feed(text), *parser.finish()]:
        if isinstance(event, Content):
            content.append(event.text)
        elif isinstance(event, CallStart):
            calls.append(
                ToolCall(id=event.id, function=ToolCallFunction(name=event.name, arguments=""))
            )
        else:
            calls[event.index].function.arguments += event.text
    joined = "".join(content)
    return (joined or None) if calls else joined, calls
