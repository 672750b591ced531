"""Tool calls in generated text: the schema that forces one, and parsing them out of a reply.

A reply carries tool calls in one of two ways:

- forced (``tool_choice`` "required" or a named function): a grammar from
  ``tool_call_schema`` holds the whole output to one JSON object, ``{"name": ...,
  "arguments": {...}}`` with the name first, so ``ForcedCall`` can announce the call
  as soon as its name is complete and stream the arguments as they are generated;
- free (``tool_choice`` "auto"): the model may write calls in the Hermes/Qwen
  convention, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, among its
  text. ``TaggedCalls`` parses a block when it closes; a block that is not a valid call
  of a known tool stays text, so nothing the model wrote is lost.

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
        name, arguments = call
        return [self._start(name), CallArguments(self.calls - 1, arguments)]


def _parse_call(block: str) -> tuple[str, str] | None:
    """``(name, arguments as JSON text)`` from a block's JSON, or None if it is not a call."""
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        return None
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
