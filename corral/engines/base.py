"""The one interface every in-process engine implements, and the values it exchanges.

An engine lives inside a worker process. It owns the model and runs generation on
its own thread; the worker's HTTP layer talks to it through ``submit`` (generation,
pushed event by event), ``embed``, ``rerank`` and, for tensor models, ``infer``.
Engines declare what they can do in ``Capabilities`` rather than being probed with
``hasattr``; what an engine does not do answers a 400 by default.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from corral.errors import CorralError, EngineError, InvalidRequest, UnsupportedCapability
from corral.protocol.v2 import TensorSpec
from corral.registry.records import Capability


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; defaults leave the model's distribution untouched."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


@dataclass(frozen=True)
class GenerationRequest:
    prompt_tokens: Sequence[int]
    max_tokens: int | None = None  # None = until end of sequence or context
    sampling: SamplingParams = SamplingParams()
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # not with a grammar: its end is the end of the output
    # An llguidance grammar (``corral.engines.guidance``) that ``Engine.check_grammar``
    # accepted; the output is constrained to it and ends when it is complete.
    grammar: str | None = None
    # Log-probabilities of each generated token and this many alternatives (0-20);
    # None: not asked for.
    logprobs: int | None = None


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model (after any grammar mask,
    before temperature and penalties), and the ``top`` most likely alternatives."""

    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    # The tokens whose text this delta completes (when the request asked for them).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Wall time in the engine: waiting for a slot excluded; prompt = until the first
    # token is sampled (prefill), generation = from there to the end. Nanoseconds.
    prompt_ns: int = field(default=0, compare=False)
    generation_ns: int = field(default=0, compare=False)
    # Of prompt_tokens, those reused from the prefix cache.
    prompt_tokens_cached: int = field(default=0, compare=False)
    # The stop string that ended the output (reason "stop"), if one did.
    stop_sequence: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Failed:
    error: CorralError


Event = TextDelta | Finished | Failed
EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class Capabilities:
    offers: frozenset[Capability]  # the vocabulary the registry and every API use
    context_length: int  # tokens one request may use (prompt + completion)
    slots: int  # requests decoded together
    embedding_length: int = 0
    structured_output: bool = False  # ``check_grammar`` works: output can be held to a grammar
    # Token ids a request may give (prompts as id lists) are 0..vocab_size-1; 0 = unknown,
    # and an engine that does not say gets ids unchecked.
    vocab_size: int = 0
    # The longest token's text in bytes (0 = unknown): a text longer than
    # context_length * max_token_bytes cannot fit, and is refused without tokenizing.
    max_token_bytes: int = 0


class RequestHandle(ABC):
    """What ``submit`` returns: lets the caller abandon the request."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop generating and free the slot; no further events are sent."""


@dataclass(frozen=True)
class TensorModel:
    """A tensor model's inputs and outputs, and its platform's name (V2 metadata)."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


Tensors = dict[str, np.ndarray[Any, Any]]


class Engine(ABC):
    """A loaded model: it generates text, embeds, reranks, or maps tensors to tensors."""

    capabilities: Capabilities
    chat_template: str | None = None
    bos_text: str = ""
    eos_text: str = ""
    tensor_model: TensorModel | None = None  # set by engines that offer TENSOR

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Text to token ids, as the model's own tokenizer does it."""
        raise UnsupportedCapability("This model takes tensors, not text.", param="model")

    def check_grammar(self, grammar: str, *, param: str) -> None:
        """Refuse (a 400 naming ``param``) a grammar this model cannot run.

        ``grammar`` is llguidance's; an engine that offers structured output compiles it
        with its own tokenizer here, on the request's thread, so the engine thread only
        ever sees grammars that compiled.
        """
        raise UnsupportedCapability(
            "This model's engine cannot constrain its output to a grammar or schema.",
            param=param,
        )

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        """Queue a generation; ``sink`` is called from the engine thread for each event."""
        raise UnsupportedCapability("This model cannot generate text.", param="model")

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One L2-normalised embedding per input token list."""
        raise UnsupportedCapability("This model does not produce embeddings.", param="model")

    async def infer(self, inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        """The ``outputs`` named, for ``inputs`` already checked against
        ``tensor_model`` (names, datatypes, shapes)."""
        raise UnsupportedCapability("This model does not take tensors.", param="model")

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        """One relevance score per (query, document) input from ``rerank_tokens``."""
        raise UnsupportedCapability("This model does not rerank documents.", param="model")

    def infill_tokens(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt (``suffix`` on completions)."""
        raise InvalidRequest(
            "suffix (fill-in-the-middle) needs a model whose vocabulary has FIM tokens; "
            "this one has none.",
            param="suffix",
        )

    def rerank_tokens(self, query: str, document: str) -> list[int]:
        """A (query, document) pair as the model's reranking reads it."""
        raise UnsupportedCapability("This model does not rerank documents.", param="model")

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Live counters: busy slots, queued requests, prompt tokens cached/evaluated."""

    @abstractmethod
    def close(self) -> None:
        """Stop the engine thread and free the model."""


async def stream_events(engine: Engine, request: GenerationRequest) -> AsyncIterator[Event]:
    """Run one generation and yield its events on the caller's event loop.

    Leaving the loop early (client gone, task cancelled) cancels the request in the
    engine at once, which frees its slot for the next request.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    handle = engine.submit(request, sink)
    done = False
    try:
        while not done:
            event = await queue.get()
            done = isinstance(event, Finished | Failed)
            yield event
    finally:
        if not done:
            handle.cancel()


async def stream_many(
    engine: Engine, requests: Sequence[GenerationRequest]
) -> AsyncIterator[tuple[int, Event]]:
    """Run several generations at once (``n`` > 1) and yield ``(index, event)`` as the
    events come; each ends with its Finished or Failed. Leaving early cancels the rest."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def sink_for(index: int) -> EventSink:
        def sink(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (index, event))

        return sink

    handles = [engine.submit(request, sink_for(i)) for i, request in enumerate(requests)]
    running = set(range(len(requests)))
    try:
        while running:
            index, event = await queue.get()
            if isinstance(event, Finished | Failed):
                running.discard(index)
            yield index, event
    finally:
        for index in running:
            handles[index].cancel()


@dataclass(frozen=True)
class Collected:
    """One whole generation: its text, how it ended, and its tokens' log-probabilities."""

    text: str
    finished: Finished
    logprobs: tuple[TokenLogprob, ...] = ()


async def collect_many(engine: Engine, requests: Sequence[GenerationRequest]) -> list[Collected]:
    """Run several generations to the end (``n`` > 1), in the order of ``requests``."""
    parts: list[list[TextDelta]] = [[] for _ in requests]
    ends: list[Finished | None] = [None] * len(requests)
    async for index, event in stream_many(engine, requests):
        if isinstance(event, TextDelta):
            parts[index].append(event)
        elif isinstance(event, Failed):
            raise event.error
        else:
            ends[index] = event
    return [
        Collected(
            "".join(d.text for d in deltas),
            end,
            tuple(lp for d in deltas for lp in d.logprobs),
        )
        for deltas, end in zip(parts, ends, strict=True)
        if end is not None
    ]


async def collect(engine: Engine, request: GenerationRequest) -> tuple[str, Finished]:
    """Run one generation to the end; return its text and how it finished."""
    parts: list[str] = []
    async for event in stream_events(engine, request):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Failed):
            raise event.error
        else:
            return "".join(parts), event
    raise EngineError("the engine ended the request without finishing it")
