"""Engine results in OpenAI's response shapes, streamed (SSE chunks) and whole.

The writers reproduce OpenAI's stream byte for byte: a first chat chunk carrying
``{"role": "assistant", "content": ""}``, content deltas, a last chunk with an empty
delta and the finish reason, then, with ``stream_options.include_usage``, a chunk
with empty ``choices`` and the usage (every earlier chunk carrying ``"usage": null``),
and finally ``data: [DONE]``. Tool calls stream as OpenAI streams them: a delta with
the call's index, id, type, name and empty arguments, then deltas with pieces of the
arguments, and ``finish_reason: "tool_calls"`` at the end.
"""

from __future__ import annotations

import time
import uuid

from corral.engines.base import Finished
from corral.errors import CorralError
from corral.httputil import json_dumps, sse
from corral.protocol.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceMessage,
    Completion,
    CompletionChoice,
    FinishReason,
    FunctionDelta,
    PromptTokensDetails,
    Timings,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from corral.worker.tool_calls import CallStart, Content, ReplyEvent


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_of(finished: Finished, timings: bool = False) -> Usage:
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=finished.prompt_tokens_cached),
        timings=Timings(
            prompt_ns=finished.prompt_ns,
            generation_ns=finished.generation_ns,
            prompt_tokens_cached=finished.prompt_tokens_cached,
        )
        if timings
        else None,
    )


def error_event(error: CorralError) -> bytes:
    return sse(json_dumps(error.to_openai()))


class ChatStreamWriter:
    def __init__(self, model: str, include_usage: bool, timings: bool = False) -> None:
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.timings = timings

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        exclude = None if self.include_usage else {"usage"}
        return sse(chunk.model_dump_json(exclude=exclude))

    def start(self) -> bytes:
        return self._chunk(
            [ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))]
        )

    def delta(self, text: str) -> bytes:
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(content=text))])

    def events(self, events: list[ReplyEvent]) -> bytes:
        return b"".join(self._event(event) for event in events)

    def _event(self, event: ReplyEvent) -> bytes:
        if isinstance(event, Content):
            return self.delta(event.text)
        if isinstance(event, CallStart):
            call = ToolCallDelta(
                index=event.index,
                id=event.id,
                type="function",
                function=FunctionDelta(name=event.name, arguments=""),
            )
        else:
            call = ToolCallDelta(index=event.index, function=FunctionDelta(arguments=event.text))
        return self._chunk([ChatChunkChoice(index=0, delta=ChatDelta(tool_calls=[call]))])

    def finish(self, finished: Finished, called_tools: bool = False) -> bytes:
        reason = finish_reason(finished, called_tools)
        choice = ChatChunkChoice(
            index=0, delta=ChatDelta(), finish_reason=reason, stop_reason=finished.stop_sequence
        )
        out = self._chunk([choice])
        if self.include_usage:
            out += self._chunk([], usage_of(finished, self.timings))
        return out


class CompletionStreamWriter:
    def __init__(self, model: str, include_usage: bool, timings: bool = False) -> None:
        self.id = new_id("cmpl")
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.timings = timings

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        chunk = Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        exclude = None if self.include_usage else {"usage"}
        return sse(chunk.model_dump_json(exclude=exclude))

    def delta(self, text: str) -> bytes:
        return self._chunk([CompletionChoice(text=text, index=0, finish_reason=None)])

    def finish(self, finished: Finished) -> bytes:
        choice = CompletionChoice(
            text="", index=0, finish_reason=finished.reason, stop_reason=finished.stop_sequence
        )
        out = self._chunk([choice])
        if self.include_usage:
            out += self._chunk([], usage_of(finished, self.timings))
        return out


def finish_reason(finished: Finished, called_tools: bool) -> FinishReason:
    """``tool_calls`` when a reply that called tools ended by itself (not cut short)."""
    return "tool_calls" if called_tools and finished.reason == "stop" else finished.reason


def chat_completion(
    model: str,
    text: str | None,
    finished: Finished,
    timings: bool = False,
    tool_calls: list[ToolCall] | None = None,
) -> ChatCompletion:
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(
                index=0,
                message=ChoiceMessage(content=text, tool_calls=tool_calls or None),
                finish_reason=finish_reason(finished, bool(tool_calls)),
                stop_reason=finished.stop_sequence,
            )
        ],
        usage=usage_of(finished, timings),
    )


def completion(model: str, text: str, finished: Finished, timings: bool = False) -> Completion:
    return Completion(
        id=new_id("cmpl"),
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                text=text,
                index=0,
                finish_reason=finished.reason,
                stop_reason=finished.stop_sequence,
            )
        ],
        usage=usage_of(finished, timings),
    )
