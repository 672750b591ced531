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
from collections.abc import Sequence
from typing import Any

from corral.engines.base import Finished, TokenLogprob
from corral.errors import CorralError
from corral.httputil import json_dumps, sse
from corral.protocol.handoff import usage_comment
from corral.protocol.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    ChoiceMessage,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FinishReason,
    FunctionDelta,
    PromptTokensDetails,
    Timings,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from corral.protocol.openai import TokenLogprob as WireTokenLogprob
from corral.worker.tool_calls import CallStart, Content, ReplyEvent


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_of(finished: Finished, timings: bool = False, *more: Finished) -> Usage:
    """The usage of one reply; with ``more`` (``n`` > 1), of all of them: the prompt
    counted once, as OpenAI counts it, the completions summed."""
    completion = finished.completion_tokens + sum(f.completion_tokens for f in more)
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=completion,
        total_tokens=finished.prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=finished.prompt_tokens_cached),
        timings=Timings(
            prompt_ns=finished.prompt_ns,
            generation_ns=finished.generation_ns,
            prompt_tokens_cached=finished.prompt_tokens_cached,
        )
        if timings
        else None,
    )


def _token(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(items: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    """Engine log-probabilities in a chat choice's shape."""
    return ChoiceLogprobs(
        content=[
            WireTokenLogprob(
                token=_token(item.piece),
                logprob=item.logprob,
                bytes=list(item.piece),
                top_logprobs=[
                    TopLogprob(token=_token(piece), logprob=lp, bytes=list(piece))
                    for piece, lp in item.top
                ],
            )
            for item in items
        ]
    )


def completion_logprobs(items: Sequence[TokenLogprob], offset: int, top: int) -> CompletionLogprobs:
    """Engine log-probabilities in ``/v1/completions``' legacy shape; ``offset`` is where
    the first token's text starts in the choice's text."""
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(_token(item.piece))
    return CompletionLogprobs(
        tokens=[_token(item.piece) for item in items],
        token_logprobs=[item.logprob for item in items],
        top_logprobs=[{_token(p): lp for p, lp in item.top} for item in items] if top else None,
        text_offset=offsets,
    )


def error_event(error: CorralError) -> bytes:
    return sse(json_dumps(error.to_openai()))


class _StreamWriter:
    """What the chat and completion streams share: one id for every chunk, ``usage``
    only when asked for (every earlier chunk then carries ``"usage": null``)."""

    _prefix: str
    _wire: type[ChatCompletionChunk] | type[Completion]

    def __init__(
        self,
        model: str,
        include_usage: bool,
        timings: bool = False,
        usage_comment: bool = False,
    ) -> None:
        self.id = new_id(self._prefix)
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.timings = timings
        self.usage_comment = usage_comment  # the gateway's counts (handoff.USAGE_HEADER)

    def _chunk(self, choices: list[Any], usage: Usage | None = None) -> bytes:
        chunk = self._wire(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        exclude = None if self.include_usage else {"usage"}
        return sse(chunk.model_dump_json(exclude=exclude))

    def _last(self, choice: Any, finished: Finished, usage: bool) -> bytes:
        """A choice's last chunk; with ``usage``, the usage chunk too (if asked for)."""
        out = self._chunk([choice])
        return out + self.usage(finished) if usage else out

    def usage(self, finished: Finished, *more: Finished) -> bytes:
        """The usage chunk, once every choice has finished (if not asked for: nothing, or
        the gateway's comment line)."""
        if not self.include_usage:
            if not self.usage_comment:
                return b""
            usage = usage_of(finished, False, *more)
            counts = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            }
            return usage_comment(counts)
        return self._chunk([], usage_of(finished, self.timings, *more))


class ChatStreamWriter(_StreamWriter):
    _prefix = "chatcmpl"
    _wire = ChatCompletionChunk

    def start(self, index: int = 0) -> bytes:
        return self._chunk(
            [ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))]
        )

    def delta(self, text: str, index: int = 0, logprobs: ChoiceLogprobs | None = None) -> bytes:
        choice = ChatChunkChoice(index=index, delta=ChatDelta(content=text), logprobs=logprobs)
        return self._chunk([choice])

    def events(
        self,
        events: list[ReplyEvent],
        index: int = 0,
        logprobs: Sequence[TokenLogprob] = (),
    ) -> bytes:
        """Chunks for ``events``; ``logprobs`` (of the tokens behind them) ride on the first
        content chunk, as OpenAI sends them."""
        if logprobs and events and isinstance(events[0], Content):
            first = self.delta(events[0].text, index, chat_logprobs(logprobs))
            return first + b"".join(self._event(event, index) for event in events[1:])
        return b"".join(self._event(event, index) for event in events)

    def _event(self, event: ReplyEvent, index: int) -> bytes:
        if isinstance(event, Content):
            return self.delta(event.text, index)
        if isinstance(event, CallStart):
            call = ToolCallDelta(
                index=event.index,
                id=event.id,
                type="function",
                function=FunctionDelta(name=event.name, arguments=""),
            )
        else:
            call = ToolCallDelta(index=event.index, function=FunctionDelta(arguments=event.text))
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=[call]))])

    def finish(
        self, finished: Finished, called_tools: bool = False, index: int = 0, usage: bool = True
    ) -> bytes:
        reason = finish_reason(finished, called_tools)
        choice = ChatChunkChoice(
            index=index,
            delta=ChatDelta(),
            finish_reason=reason,
            stop_reason=finished.stop_sequence,
        )
        return self._last(choice, finished, usage)


class CompletionStreamWriter(_StreamWriter):
    _prefix = "cmpl"
    _wire = Completion

    def delta(self, text: str, index: int = 0, logprobs: CompletionLogprobs | None = None) -> bytes:
        choice = CompletionChoice(text=text, index=index, logprobs=logprobs, finish_reason=None)
        return self._chunk([choice])

    def finish(self, finished: Finished, index: int = 0, usage: bool = True) -> bytes:
        choice = CompletionChoice(
            text="",
            index=index,
            finish_reason=finished.reason,
            stop_reason=finished.stop_sequence,
        )
        return self._last(choice, finished, usage)


def finish_reason(finished: Finished, called_tools: bool) -> FinishReason:
    """``tool_calls`` when a reply that called tools ended by itself (not cut short)."""
    return "tool_calls" if called_tools and finished.reason == "stop" else finished.reason


# content, end, calls, logprobs
ChatChoiceParts = tuple[str | None, Finished, list[ToolCall], ChoiceLogprobs | None]


def chat_completion(
    model: str,
    text: str | None,
    finished: Finished,
    timings: bool = False,
    tool_calls: list[ToolCall] | None = None,
    more: Sequence[ChatChoiceParts] = (),
    logprobs: ChoiceLogprobs | None = None,
) -> ChatCompletion:
    """A whole chat completion; ``more`` are the further choices of ``n`` > 1."""
    parts = [(text, finished, tool_calls or [], logprobs), *more]
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=int(time.time()),
        model=model,
        choices=[
            ChatChoice(
                index=i,
                message=ChoiceMessage(content=content, tool_calls=calls or None),
                logprobs=choice_logprobs,
                finish_reason=finish_reason(end, bool(calls)),
                stop_reason=end.stop_sequence,
            )
            for i, (content, end, calls, choice_logprobs) in enumerate(parts)
        ],
        usage=usage_of(finished, timings, *(part[1] for part in more)),
    )


def completion(
    model: str,
    text: str,
    finished: Finished,
    timings: bool = False,
    more: Sequence[tuple[str, Finished, CompletionLogprobs | None]] = (),
    logprobs: CompletionLogprobs | None = None,
) -> Completion:
    """A whole completion; ``more`` are the further choices of ``n`` > 1."""
    parts = [(text, finished, logprobs), *more]
    return Completion(
        id=new_id("cmpl"),
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                text=choice_text,
                index=i,
                logprobs=choice_logprobs,
                finish_reason=end.reason,
                stop_reason=end.stop_sequence,
            )
            for i, (choice_text, end, choice_logprobs) in enumerate(parts)
        ],
        usage=usage_of(finished, timings, *(part[1] for part in more)),
    )
