"""What a worker does with each OpenAI-shaped request: validate, translate, run, reply."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence

import numpy as np
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from corral.engines.base import (
    Engine,
    Finished,
    GenerationRequest,
    TextDelta,
    collect_many,
    stream_many,
)
from corral.engines.chat_template import ChatTemplate
from corral.errors import ContextLengthExceeded, InvalidRequest, UnsupportedCapability
from corral.httputil import SSE_DONE, event_stream, run_until_disconnect
from corral.protocol.handoff import USAGE_HEADER
from corral.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from corral.protocol.parse import parse_body
from corral.protocol.rerank import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from corral.registry.records import Capability
from corral.worker import handoff, responses, tool_calls, translate
from corral.worker.responses import ChatStreamWriter, CompletionStreamWriter, error_event
from corral.worker.tool_calls import ReplyParser


class WorkerService:
    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.template = ChatTemplate(
            engine.chat_template, bos_token=engine.bos_text, eos_token=engine.eos_text
        )
        self.call_format = translate.call_format(self.template)

    # --- tokenization rules -------------------------------------------------------

    def tokenize_chat(self, prompt: str) -> list[int]:
        self.check_text_size(prompt, "messages")
        # Templates that write the BOS token themselves must not get a second one.
        bos = self.engine.bos_text
        has_bos = bool(bos) and prompt.startswith(bos)
        return self.engine.tokenize(prompt, add_special=not has_bos, parse_special=True)

    def tokenize_prompt(self, prompt: str) -> list[int]:
        self.check_text_size(prompt, "prompt")
        return self.engine.tokenize(prompt, add_special=True, parse_special=True)

    def check_text_size(self, text: str, param: str) -> None:
        """Refuse a text too long for the context whatever its tokens, before tokenizing
        it: a 100 MB prompt took 45 s and 6.7 GB to tokenize, then was refused anyway.
        Each character is at least one byte, so the bound never refuses a text that fits."""
        caps = self.engine.capabilities
        most = caps.context_length * caps.max_token_bytes
        if most and len(text) > most:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {caps.context_length} tokens, "
                f"and the {param} ({len(text):,} characters) is longer than any text of "
                f"{caps.context_length} tokens can be. Please shorten it.",
                param=param,
            )

    def _require_completion(self) -> None:
        if Capability.COMPLETION not in self.engine.capabilities.offers:
            raise UnsupportedCapability(
                f"The model '{self.model_name}' is an embedding model; it cannot generate text.",
                param="model",
            )

    def _finished(self, request: Request, body: BaseModel) -> Response:
        """A whole response for a request the engine ran to the end: recorded first
        (batch spool, execution log; see ``handoff``), then sent."""
        payload = body.model_dump_json()
        handoff.finished(request, payload)
        return Response(payload, media_type="application/json")

    # --- endpoints -----------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        req = parse_body(await request.body(), ChatCompletionRequest)
        self._require_completion()
        context = self.engine.capabilities.context_length
        gen = translate.chat_request(
            req, self.template, self.tokenize_chat, context, self.engine.check_grammar
        )
        gens = translate.choices(gen, req.n)
        parsers = [translate.reply_parser(req, self.call_format) for _ in gens]
        if req.stream:
            writer = ChatStreamWriter(
                self.model_name, req.include_usage(), req.timings, wants_usage_comment(request)
            )
            return event_stream(self._chat_stream(gens, writer, parsers))
        done = await run_until_disconnect(request, collect_many(self.engine, gens))
        parts: list[responses.ChatChoiceParts] = []
        for parser, one in zip(parsers, done, strict=True):
            content, calls = tool_calls.collect(parser, one.text)
            logprobs = responses.chat_logprobs(one.logprobs) if gen.logprobs is not None else None
            parts.append((content, one.finished, calls, logprobs))
        (content, finished, calls, logprobs), *more = parts
        reply = responses.chat_completion(
            self.model_name, content, finished, req.timings, calls, more, logprobs
        )
        return self._finished(request, reply)

    async def _chat_stream(
        self, gens: list[GenerationRequest], writer: ChatStreamWriter, parsers: list[ReplyParser]
    ) -> AsyncIterator[bytes]:
        for index in range(len(gens)):
            yield writer.start(index)
        ends: list[Finished] = []
        async for index, event in stream_many(self.engine, gens):
            reply = parsers[index]
            if isinstance(event, TextDelta):
                if chunk := writer.events(reply.feed(event.text), index, event.logprobs):
                    yield chunk
            elif isinstance(event, Finished):
                ends.append(event)
                yield writer.events(reply.finish(), index) + writer.finish(
                    event, reply.calls > 0, index, usage=False
                )
            else:
                yield error_event(event.error)
                return
        yield writer.usage(*ends)
        yield SSE_DONE

    async def completion(self, request: Request) -> Response:
        req = parse_body(await request.body(), CompletionRequest)
        self._require_completion()
        context = self.engine.capabilities.context_length
        gen = translate.completion_request(
            req,
            self.tokenize_prompt,
            context,
            self.engine.check_grammar,
            self.engine.infill_tokens,
            vocab_size=self.engine.capabilities.vocab_size,
        )
        gens = translate.choices(gen, req.n)
        echo = req.prompt if req.echo and isinstance(req.prompt, str) else ""
        if req.stream:
            writer = CompletionStreamWriter(
                self.model_name, req.include_usage(), req.timings, wants_usage_comment(request)
            )
            return event_stream(self._completion_stream(gens, writer, echo))
        done = await run_until_disconnect(request, collect_many(self.engine, gens))
        top = gen.logprobs
        parts = [
            (
                echo + one.text,
                one.finished,
                None
                if top is None
                else responses.completion_logprobs(one.logprobs, len(echo), top),
            )
            for one in done
        ]
        (text, finished, logprobs), *more = parts
        reply = responses.completion(self.model_name, text, finished, req.timings, more, logprobs)
        return self._finished(request, reply)

    async def _completion_stream(
        self, gens: list[GenerationRequest], writer: CompletionStreamWriter, echo: str
    ) -> AsyncIterator[bytes]:
        if echo:
            for index in range(len(gens)):
                yield writer.delta(echo, index)
        ends: list[Finished] = []
        offsets = [len(echo)] * len(gens)  # where each choice's next token starts
        top = gens[0].logprobs
        async for index, event in stream_many(self.engine, gens):
            if isinstance(event, TextDelta):
                logprobs = None
                if top is not None:
                    logprobs = responses.completion_logprobs(event.logprobs, offsets[index], top)
                    offsets[index] += sum(len(t) for t in logprobs.tokens)
                yield writer.delta(event.text, index, logprobs)
            elif isinstance(event, Finished):
                ends.append(event)
                yield writer.finish(event, index, usage=False)
            else:
                yield error_event(event.error)
                return
        yield writer.usage(*ends)
        yield SSE_DONE

    async def embeddings(self, request: Request) -> Response:
        req = parse_body(await request.body(), EmbeddingRequest)
        caps = self.engine.capabilities
        if Capability.EMBEDDINGS not in caps.offers:
            raise UnsupportedCapability(
                f"The model '{self.model_name}' does not produce embeddings; "
                "use an embedding model.",
                param="model",
            )
        if req.dimensions is not None and req.dimensions > caps.embedding_length:
            raise InvalidRequest(
                f"dimensions must be at most {caps.embedding_length} for this model.",
                param="dimensions",
            )
        token_lists = self._embedding_tokens(req.inputs(), req.truncate)
        vectors = await run_until_disconnect(request, self.engine.embed(token_lists))
        n_tokens = sum(map(len, token_lists))
        body = EmbeddingResponse(
            data=[
                Embedding(embedding=_encode(v, req.dimensions, req.encoding_format), index=i)
                for i, v in enumerate(vectors)
            ],
            model=self.model_name,
            usage=EmbeddingUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
        )
        return self._finished(request, body)

    async def rerank(self, request: Request) -> Response:
        req = parse_body(await request.body(), RerankRequest)
        if Capability.RERANK not in self.engine.capabilities.offers:
            raise UnsupportedCapability(
                f"The model '{self.model_name}' is not a reranker; use a reranking model.",
                param="model",
            )
        texts = req.texts()
        limit = self.engine.capabilities.context_length
        pairs = []
        self.check_text_size(req.query, "query")
        for i, text in enumerate(texts):
            self.check_text_size(text, f"documents[{i}]")
            tokens = self.engine.rerank_tokens(req.query, text)
            if len(tokens) > limit:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {limit} tokens. However, the "
                    f"query with documents[{i}] has {len(tokens)} tokens.",
                    param="documents",
                )
            pairs.append(tokens)
        scores = await run_until_disconnect(request, self.engine.rerank(pairs))
        ranked = sorted(range(len(texts)), key=lambda i: scores[i], reverse=True)
        n_tokens = sum(map(len, pairs))
        body = RerankResponse(
            id=responses.new_id("rerank"),
            model=self.model_name,
            results=[
                RerankResult(
                    index=i,
                    relevance_score=scores[i],
                    document=RerankDocument(text=texts[i]) if req.return_documents else None,
                )
                for i in ranked[: req.top_n]
            ],
            usage=RerankUsage(prompt_tokens=n_tokens, total_tokens=n_tokens),
        )
        return self._finished(request, body)

    def _embedding_tokens(
        self, inputs: Sequence[str | list[int]], truncate: bool = False
    ) -> list[list[int]]:
        """Each input's tokens; one longer than the context is a 400, or with
        ``truncate`` cut to fit (its last token, the end marker a model adds, kept)."""
        caps = self.engine.capabilities
        limit, vocab = caps.context_length, caps.vocab_size
        out: list[list[int]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str) and not item:
                raise InvalidRequest(f"input[{i}] is an empty string.", param="input")
            if isinstance(item, str) and truncate and caps.max_token_bytes:
                # Enough text for more than ``limit`` tokens whatever they are; the rest
                # would be cut anyway, so it is not tokenized.
                item = item[: (limit + 1) * caps.max_token_bytes]
            elif isinstance(item, str):
                self.check_text_size(item, "input")
            tokens = (
                self.engine.tokenize(item, add_special=True, parse_special=False)
                if isinstance(item, str)
                else list(item)
            )
            if not isinstance(item, str):
                translate.check_token_ids(tokens, vocab, param=f"input[{i}]")
            if len(tokens) > limit and truncate:
                tokens = (
                    tokens[: limit - 1] + tokens[-1:] if isinstance(item, str) else tokens[:limit]
                )
            if len(tokens) > limit:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {limit} tokens. However, "
                    f"input[{i}] has {len(tokens)} tokens. Please reduce the length of the input.",
                    param="input",
                )
            out.append(tokens)
        return out


def _encode(vector: list[float], dimensions: int | None, fmt: str) -> list[float] | str:
    """Truncate to ``dimensions`` (re-normalised, as Matryoshka models expect) and encode."""
    if dimensions is not None and dimensions < len(vector):
        arr = np.asarray(vector[:dimensions], dtype=np.float64)
        norm = float(np.linalg.norm(arr))
        vector = (arr / norm if norm > 0 else arr).tolist()
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def wants_usage_comment(request: Request) -> bool:
    return request.headers.get(USAGE_HEADER) == "comment"
