"""llama.cpp engine: GGUF models on llama-cpp-python's low-level API, continuously batched.

Concurrent requests share one llama context, each in its own *slot* (a sequence id
with its own KV-cache stream). One engine thread runs the loop that llama.cpp's own
server and Ollama's runner run:

1. admit queued requests into free slots (reusing the longest cached prompt prefix);
2. build one ``llama_batch``: the last sampled token of every generating slot, plus
   prompt chunks of slots still prefilling, up to ``batch_size`` tokens;
3. one ``llama_decode`` over all of it;
4. sample each slot's next token with its own sampler chain, stream its text, and
   retire slots that finished or whose client went away.

Requests join and leave between steps, so a new request never waits for a long one
to finish (``llama_cpp.server`` serialises requests behind a lock instead).
``llama_decode`` releases the GIL (ctypes), so the worker's HTTP loop keeps serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
from llguidance import LLMatcher

from corral.engines.base import (
    Capabilities,
    Engine,
    EventSink,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    RequestHandle,
    TextDelta,
    TokenLogprob,
)
from corral.engines.llamacpp.descriptor import LlamaCppParams, prompt_cache_limits
from corral.engines.llamacpp.guide import Guide
from corral.engines.llamacpp.prompt_cache import CachedPrompt, PromptCache
from corral.engines.llamacpp.prompt_cache import common_prefix as _common_prefix
from corral.engines.llamacpp.sampling import SlotSampler, ignores_eos
from corral.engines.text import TextAssembler
from corral.errors import (
    CorralError,
    EngineError,
    EngineLoadError,
    InternalError,
    new_request_id,
)
from corral.registry.gguf_info import RANK_POOLING, is_embedding_model
from corral.registry.records import Capability

log = logging.getLogger("corral.engine")

_FLASH_ATTENTION = {
    "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
# Fewer shared tokens than this are evaluated again rather than copied from elsewhere.
MIN_REUSE = 16
_backend_lock = threading.Lock()
_backend_ready = False


class _Job(RequestHandle):
    def __init__(self, engine: LlamaCppEngine, request: GenerationRequest, sink: EventSink):
        self.engine = engine
        self.request = request
        self.sink = sink
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.engine._wake()


@dataclass
class _Slot:
    seq_id: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence
    last_used: float = 0.0
    job: _Job | None = None
    sampler: SlotSampler | None = None
    matcher: LLMatcher | None = None  # the request's grammar state, if it has one
    assembler: TextAssembler | None = None
    pending: int | None = None  # sampled, not yet decoded
    completion_tokens: int = 0
    admitted: int = 0  # admission order, for fair prefill
    started_ns: int = 0
    first_token_ns: int = 0
    cached: int = 0  # prompt tokens reused from the prefix cache
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent with text

    def prefilling(self) -> bool:
        assert self.job is not None
        return len(self.cache) < len(self.job.request.prompt_tokens)


@dataclass
class _EmbedJob:
    inputs: Sequence[Sequence[int]]
    future: asyncio.Future[list[list[float]]]
    loop: asyncio.AbstractEventLoop
    normalize: bool = True  # embeddings are L2-normalised; rank scores are not


class LlamaCppEngine(Engine):
    def __init__(self, model_path: Path, params: LlamaCppParams) -> None:
        _init_backend()
        self.params = params
        self._model = self._load_model(model_path)
        self._vocab = lc.llama_model_get_vocab(self._model)
        self._n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.architecture = self.meta("general.architecture") or "unknown"
        self.embedding_model = self._is_embedding_model()
        self.reranker = self.meta(f"{self.architecture}.pooling_type") == str(RANK_POOLING)
        self._ctx = self._create_context(params)
        self._memory = lc.llama_get_memory(self._ctx)
        self.n_ctx_slot = int(lc.llama_n_ctx_seq(self._ctx))
        self._n_batch = int(lc.llama_n_batch(self._ctx))
        self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(self._n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(self._n_batch,))
        self._n_seq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self._n_batch,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(self._n_batch,))
        self._n_seq[:] = 1
        self._eog = {t for t in range(self._n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)}
        self._pieces: dict[int, bytes] = {}
        template = lc.llama_model_chat_template(self._model, None)
        self.chat_template = template.decode() if template else None
        self.bos_text = self._token_text(lc.llama_vocab_bos(self._vocab))
        self.eos_text = self._token_text(lc.llama_vocab_eos(self._vocab))
        self.capabilities = Capabilities(
            offers=self._offers(),
            context_length=self.n_ctx_slot,
            slots=params.slots,
            embedding_length=(
                lc.llama_model_n_cls_out(self._model)
                if self.reranker
                else lc.llama_model_n_embd_out(self._model)
            ),
            # A complete grammar leaves end-of-generation as the only allowed token; a
            # vocabulary without one could not end (and llama.cpp aborts on no candidate).
            structured_output=not self.embedding_model and bool(self._eog),
            vocab_size=self._n_vocab,
            max_token_bytes=self._longest_piece(),
        )
        self._slots = [_Slot(seq_id=i) for i in range(params.slots)]
        self._guide = (
            Guide(self._vocab, self._n_vocab, self._eog, params.slots)
            if self.capabilities.structured_output
            else None
        )
        self._prompt_cache = PromptCache(
            *prompt_cache_limits(params, self.n_ctx_slot, self.embedding_model)
        )
        self._inbox: deque[_Job] = deque()
        self._embed_inbox: deque[_EmbedJob] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._admissions = 0
        self._prompt_cached = 0  # prompt tokens whose KV was reused from a slot's cache
        self._prompt_evaluated = 0  # prompt tokens run through the model
        self._prompt_copy_ns = 0  # saving and restoring prompt state (engine thread)
        self._decode_ns = 0  # inside llama_decode
        self._decode_steps = 0
        self._constrained_tokens = 0  # tokens sampled under a grammar's mask
        self._mask_wait_ns = 0  # waiting for masks once llama_decode had returned
        self._mask_apply_ns = 0  # writing masks over logits
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()

    # --- loading ----------------------------------------------------------------

    @staticmethod
    def _load_model(model_path: Path) -> Any:
        if not model_path.is_file():
            raise EngineLoadError(f"model file not found: {model_path}")
        params = lc.llama_model_default_params()
        model = lc.llama_model_load_from_file(str(model_path).encode(), params)
        if not model:
            raise EngineLoadError(
                f"llama.cpp could not load {model_path} (see the worker log above)"
            )
        return model

    def _offers(self) -> frozenset[Capability]:
        if self.reranker:
            return frozenset({Capability.RERANK})
        if self.embedding_model:
            return frozenset({Capability.EMBEDDINGS})
        return frozenset({Capability.CHAT, Capability.COMPLETION})

    def _is_embedding_model(self) -> bool:
        pooling = self.meta(f"{self.architecture}.pooling_type")
        return is_embedding_model(self.architecture, int(pooling) if pooling else None)

    def _create_context(self, config: LlamaCppParams) -> Any:
        train_ctx = lc.llama_model_n_ctx_train(self._model)
        per_slot = min(config.context_length or train_ctx, train_ctx)
        params = lc.llama_context_default_params()
        params.n_threads = config.threads
        params.n_threads_batch = config.threads
        params.n_seq_max = config.slots
        params.flash_attn_type = _FLASH_ATTENTION[config.flash_attention]
        if self.embedding_model:
            # Every token of a sequence must fit one micro-batch for non-causal attention.
            params.n_ctx = per_slot
            params.n_batch = params.n_ubatch = per_slot
            params.embeddings = True
            params.kv_unified = True
        else:
            # One KV stream per slot: each request gets ``per_slot`` tokens, guaranteed.
            params.n_ctx = per_slot * config.slots
            params.n_batch = params.n_ubatch = max(config.batch_size, config.slots)
            params.kv_unified = False
        ctx = lc.llama_init_from_model(self._model, params)
        if not ctx:
            raise EngineLoadError("llama.cpp could not create a context (out of memory?)")
        return ctx

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode(errors="replace") if n >= 0 else None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = lc.llama_vocab_get_text(self._vocab, token)
        return text.decode(errors="replace") if text else ""

    # --- public interface (any thread) ---------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        size = len(data) + 8
        buf = (lc.llama_token * size)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            size = -n
            buf = (lc.llama_token * size)()
            n = lc.llama_tokenize(
                self._vocab, data, len(data), buf, size, add_special, parse_special
            )
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return b"".join(self._piece(t) for t in tokens)

    def check_grammar(self, grammar: str, *, param: str) -> None:
        if self._guide is None:
            super().check_grammar(grammar, param=param)
            return
        self._guide.matcher(grammar, param=param)  # compiled now, kept for the slot

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        if not request.prompt_tokens:
            raise EngineError("empty prompt")
        job = _Job(self, request, sink)
        with self._cv:
            self._inbox.append(job)
            self._cv.notify()
        return job

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        if not self.reranker:
            return await super().rerank(inputs)
        vectors = await self.embed(inputs, normalize=False)
        return [vector[0] for vector in vectors]

    def rerank_tokens(self, query: str, document: str) -> list[int]:
        """A (query, document) pair as the model reads it, as llama-server builds it: the
        GGUF's rerank template if it has one, else BOS query EOS SEP document EOS (each
        special token where the vocabulary asks for it)."""
        template = lc.llama_model_chat_template(self._model, b"rerank")
        if template:
            text = template.decode().replace("{query}", query).replace("{document}", document)
            return self.tokenize(text, add_special=False, parse_special=True)
        vocab = self._vocab
        eos = lc.llama_vocab_eos(vocab)
        if eos == lc.LLAMA_TOKEN_NULL:
            eos = lc.llama_vocab_sep(vocab)
        tokens = [lc.llama_vocab_bos(vocab)] if lc.llama_vocab_get_add_bos(vocab) else []
        tokens += self.tokenize(query, add_special=False, parse_special=False)
        if lc.llama_vocab_get_add_eos(vocab):
            tokens.append(eos)
        if lc.llama_vocab_get_add_sep(vocab):
            tokens.append(lc.llama_vocab_sep(vocab))
        tokens += self.tokenize(document, add_special=False, parse_special=False)
        if lc.llama_vocab_get_add_eos(vocab):
            tokens.append(eos)
        return tokens

    def infill_tokens(self, prefix: str, suffix: str) -> list[int]:
        """Fill-in-the-middle, as code models are trained for it: FIM_PRE prefix FIM_SUF
        suffix FIM_MID, the completion being the middle."""
        vocab = self._vocab
        marks = [lc.llama_vocab_fim_pre(vocab), lc.llama_vocab_fim_suf(vocab)]
        marks.append(lc.llama_vocab_fim_mid(vocab))
        if any(m == lc.LLAMA_TOKEN_NULL for m in marks):
            return super().infill_tokens(prefix, suffix)
        pre, suf, mid = marks
        tokens = [lc.llama_vocab_bos(vocab)] if lc.llama_vocab_get_add_bos(vocab) else []
        tokens += [pre, *self.tokenize(prefix, add_special=False, parse_special=False)]
        tokens += [suf, *self.tokenize(suffix, add_special=False, parse_special=False)]
        return [*tokens, mid]

    async def embed(
        self, inputs: Sequence[Sequence[int]], normalize: bool = True
    ) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        job = _EmbedJob(inputs, loop.create_future(), loop, normalize)
        with self._cv:
            self._embed_inbox.append(job)
            self._cv.notify()
        return await job.future

    def stats(self) -> dict[str, int]:
        return {
            "slots_total": len(self._slots),
            "slots_busy": sum(1 for s in self._slots if s.job is not None),
            "queued": len(self._inbox),
            "prompt_tokens_cached": self._prompt_cached,
            "prompt_tokens_evaluated": self._prompt_evaluated,
            "prompt_cache_entries": len(self._prompt_cache),
            "prompt_cache_bytes": self._prompt_cache.bytes,
            "prompt_cache_saved": self._prompt_cache.saved,
            "prompt_cache_restored": self._prompt_cache.restored,
            "prompt_copy_ns": self._prompt_copy_ns,
            "decode_ns": self._decode_ns,
            "decode_steps": self._decode_steps,
            "constrained_tokens": self._constrained_tokens,
            "mask_wait_ns": self._mask_wait_ns,
            "mask_apply_ns": self._mask_apply_ns,
        }

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=10)
        if self._guide is not None:
            self._guide.close()
        for slot in self._slots:
            self._free_sampler(slot)
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # --- engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closing or self._inbox or self._embed_inbox or self._busy()):
                    self._cv.wait()
                if self._closing:
                    return
                embed_jobs = list(self._embed_inbox)
                self._embed_inbox.clear()
            try:
                for ejob in embed_jobs:
                    self._run_embed_job(ejob)
                self._retire_cancelled()
                self._admit()
                if self._busy():
                    self._step()
            except Exception:  # a bug must fail requests, not hang them
                failure = InternalError(new_request_id())
                log.exception("engine step failed [request %s]", failure.request_id)
                self._fail_all(failure)

    def _busy(self) -> bool:
        return any(slot.job is not None for slot in self._slots)

    def _retire_cancelled(self) -> None:
        for slot in self._slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot)

    def _admit(self) -> None:
        while True:
            free = [s for s in self._slots if s.job is None]
            with self._cv:
                while self._inbox and self._inbox[0].cancelled:
                    self._inbox.popleft()
                if not free or not self._inbox:
                    return
                job = self._inbox.popleft()
            self._start(self._best_slot(free, job.request.prompt_tokens), job)

    @staticmethod
    def _best_slot(free: list[_Slot], prompt: Sequence[int]) -> _Slot:
        """The free slot with the longest cached prefix of ``prompt``; else least recent."""
        return max(free, key=lambda s: (_common_prefix(s.cache, prompt), -s.last_used))

    def _start(self, slot: _Slot, job: _Job) -> None:
        prompt = job.request.prompt_tokens
        started = time.perf_counter_ns()
        self._reuse_prefix(slot, prompt)
        self._prompt_copy_ns += time.perf_counter_ns() - started
        keep = min(_common_prefix(slot.cache, prompt), len(prompt) - 1)
        if keep < len(slot.cache) and not lc.llama_memory_seq_rm(
            self._memory, slot.seq_id, keep, -1
        ):
            lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cache[keep:]
        self._prompt_cached += keep
        slot.cached = keep
        slot.started_ns = time.perf_counter_ns()
        slot.first_token_ns = 0
        slot.job = job
        grammar = job.request.grammar
        if grammar is not None:
            try:
                if self._guide is None:
                    raise EngineError("this model cannot constrain its output")
                slot.matcher = self._guide.matcher(grammar, param="grammar")
            except CorralError as exc:
                job.sink(Failed(exc))
                self._release(slot)
                return
        slot.sampler = SlotSampler(job.request, self._vocab, self._eog, self.n_ctx_slot)
        slot.assembler = TextAssembler(job.request.stop)
        slot.pending = None
        slot.completion_tokens = 0
        self._admissions += 1
        slot.admitted = self._admissions

    # --- prompt reuse across slots -------------------------------------------------

    def _reuse_prefix(self, slot: _Slot, prompt: Sequence[int]) -> None:
        """Give ``slot`` the longest cached prefix of ``prompt`` there is anywhere.

        The slot's own cells are the cheapest source. Another slot's sequence (running or
        idle) or a prompt cache entry is copied in when it shares at least
        ``MIN_REUSE`` more tokens and the copy is not mostly waste (llama.cpp copies a
        sequence whole; the tail beyond the shared prefix is dropped after). Whatever
        the slot held is saved to the prompt cache first if most of it would be lost.
        """
        own = _common_prefix(slot.cache, prompt)
        source: _Slot | CachedPrompt | None = None
        shared = own
        for other in self._slots:
            n = _common_prefix(other.cache, prompt)
            if other is not slot and n > shared and _worth_copying(n, own, len(other.cache)):
                source, shared = other, n
        entry, n = self._prompt_cache.longest(prompt)
        if entry is not None and n > shared and _worth_copying(n, own, len(entry.tokens)):
            source, shared = entry, n
        if source is None:
            if 2 * own < len(slot.cache):
                self._save_prompt(slot)
            return
        self._save_prompt(slot)
        if isinstance(source, _Slot):
            state = self._read_state(source.seq_id)
            tokens = list(source.cache)
        else:
            self._prompt_cache.take(source)
            state, tokens = source.state, source.tokens
        if state is not None and self._write_state(slot.seq_id, state):
            slot.cache = tokens
        else:
            lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cache = []

    def _save_prompt(self, slot: _Slot) -> None:
        """Copy the slot's sequence into the prompt cache, unless it is kept elsewhere."""
        tokens = slot.cache
        if len(tokens) < MIN_REUSE or self._prompt_cache.holds(tokens):
            return
        if any(
            other is not slot and _common_prefix(other.cache, tokens) == len(tokens)
            for other in self._slots
        ):
            return
        size = lc.llama_state_seq_get_size_ext(self._ctx, slot.seq_id, 0)
        if not self._prompt_cache.fits(len(tokens), size):
            return
        state = self._read_state(slot.seq_id, size)
        if state is not None:
            self._prompt_cache.add(tokens, state)

    def _read_state(self, seq_id: int, size: int | None = None) -> np.ndarray | None:
        if size is None:
            size = lc.llama_state_seq_get_size_ext(self._ctx, seq_id, 0)
        # Uninitialised (a history of 1,500 tokens is ~55 MB on the bench model: zeroing
        # it first would cost as much as the copy).
        state = np.empty(size, dtype=np.uint8)
        buffer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        written = lc.llama_state_seq_get_data_ext(self._ctx, buffer, size, seq_id, 0)
        if written != size:
            log.warning("could not copy sequence %d out (%d of %d bytes)", seq_id, written, size)
            return None
        return state

    def _write_state(self, seq_id: int, state: np.ndarray) -> bool:
        buffer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        read = lc.llama_state_seq_set_data_ext(self._ctx, buffer, len(state), seq_id, 0)
        if read != len(state):
            log.warning("could not restore a cached prompt into sequence %d", seq_id)
            return False
        return True

    def _step(self) -> None:
        busy = sorted((s for s in self._slots if s.job is not None), key=lambda s: s.admitted)
        # What each slot adds this step: its last sampled token, or a chunk of its
        # prompt; prompt chunks share what is left of the batch in admission order.
        room = self._n_batch - sum(1 for slot in busy if slot.pending is not None)
        chunks: dict[int, int] = {}
        for slot in busy:
            if room <= 0:
                break
            if slot.pending is None and slot.prefilling():
                assert slot.job is not None
                chunks[slot.seq_id] = k = min(
                    len(slot.job.request.prompt_tokens) - len(slot.cache), room
                )
                room -= k
        # Tokens go into the batch grouped in sequence order. Each slot's sequence has a
        # KV stream of its own, and llama.cpp runs a batch whose streams come out of
        # order about twice as slowly (measured: an 8-sequence step of the 134M bench
        # model took 26 ms with the streams in order and 48 ms interleaved). Admission
        # order drifts away from slot order as a worker ages (a request takes the slot
        # with its prefix, or the least recently used one), so ordering by admission
        # made a long-lived worker slow down run after run (issue 12).
        seq_ids = self._batch.seq_id
        n = 0
        outputs: list[tuple[_Slot, int]] = []
        for slot in sorted(busy, key=lambda s: s.seq_id):
            if slot.pending is not None:
                self._tokens[n] = slot.pending
                self._pos[n] = len(slot.cache)
                seq_ids[n][0] = slot.seq_id
                self._logits[n] = 1
                slot.cache.append(slot.pending)
                slot.pending = None
                outputs.append((slot, n))
                n += 1
                continue
            k = chunks.get(slot.seq_id, 0)
            if k == 0:
                continue
            assert slot.job is not None
            start = len(slot.cache)
            chunk = slot.job.request.prompt_tokens[start : start + k]
            self._tokens[n : n + k] = chunk
            self._pos[n : n + k] = np.arange(start, start + k)
            self._logits[n : n + k] = 0
            for i in range(n, n + k):
                seq_ids[i][0] = slot.seq_id
            slot.cache.extend(chunk)
            self._prompt_evaluated += k
            n += k
            if not slot.prefilling():
                self._logits[n - 1] = 1
                outputs.append((slot, n - 1))
        self._batch.n_tokens = n
        masks = self._start_masks(outputs)
        started = time.perf_counter_ns()
        status = lc.llama_decode(self._ctx, self._batch)
        self._decode_ns += time.perf_counter_ns() - started
        self._decode_steps += 1
        if masks is not None:
            waited = time.perf_counter_ns()
            masks.result()
            self._mask_wait_ns += time.perf_counter_ns() - waited
        if status != 0:
            self._fail_slots(busy, EngineError(f"llama_decode failed with status {status}"))
            return
        for slot, index in outputs:
            if slot.job is None or slot.job.cancelled:
                continue
            assert slot.sampler is not None
            if slot.matcher is not None and not self._constrain(slot, index):
                continue
            token = slot.sampler.sample(self._ctx, index)
            if slot.job.request.logprobs is not None:
                slot.logprobs.append(self._logprob(index, token, slot.job.request.logprobs))
            self._accept(slot, token)

    def _start_masks(self, outputs: Sequence[tuple[_Slot, int]]) -> Future[None] | None:
        """Have llguidance compute the masks of this step's constrained rows meanwhile."""
        if self._guide is None:
            return None
        rows = [(s.matcher, s.seq_id) for s, _ in outputs if s.matcher is not None]
        return self._guide.start_masks(rows)

    def _constrain(self, slot: _Slot, index: int) -> bool:
        """Hold the slot's next token to its grammar; fail the request if it cannot be."""
        assert self._guide is not None and slot.matcher is not None
        started = time.perf_counter_ns()
        allowed = not slot.matcher.is_error() and self._guide.apply(self._ctx, index, slot.seq_id)
        self._mask_apply_ns += time.perf_counter_ns() - started
        self._constrained_tokens += 1
        if not allowed:
            error = slot.matcher.get_error() or "no token is allowed"
            self._fail_slots([slot], EngineError(f"the output constraint failed: {error}"))
            return False
        return True

    def _accept(self, slot: _Slot, token: int) -> None:
        job, assembler = slot.job, slot.assembler
        assert job is not None and assembler is not None
        request = job.request
        slot.completion_tokens += 1
        if slot.completion_tokens == 1:
            slot.first_token_ns = time.perf_counter_ns()
        if token in self._eog and not ignores_eos(request):
            # With a grammar, the mask allows end-of-generation only where the output is
            # complete; once nothing else can follow, it is the only token allowed.
            self._finish(slot, "stop")
            return
        if slot.matcher is not None and not slot.matcher.consume_token(token):
            error = EngineError(f"the output constraint failed: {slot.matcher.get_error()}")
            self._fail_slots([slot], error)
            return
        text = assembler.feed(self._piece(token))
        if text:
            job.sink(TextDelta(text, self._take_logprobs(slot)))
        if assembler.stopped or (slot.matcher is not None and slot.matcher.is_stopped()):
            self._finish(slot, "stop")
        elif self._budget_spent(slot, request):
            self._finish(slot, "length")
        else:
            slot.pending = token

    def _logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """The token's log-probability in the logits at ``index`` (masked, if a grammar
        holds the request), and the ``top`` most likely tokens."""
        logits = np.ctypeslib.as_array(
            lc.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,)
        )
        peak = float(logits.max())
        total = peak + float(np.log(np.exp(logits - peak).sum()))
        best: tuple[tuple[bytes, float], ...] = ()
        if top > 0:
            ids = np.argpartition(logits, -top)[-top:]
            ids = ids[np.argsort(logits[ids])[::-1]]
            best = tuple((self._piece(int(i)), float(logits[i]) - total) for i in ids)
        return TokenLogprob(self._piece(token), float(logits[token]) - total, best)

    @staticmethod
    def _take_logprobs(slot: _Slot) -> tuple[TokenLogprob, ...]:
        taken = tuple(slot.logprobs)
        slot.logprobs.clear()
        return taken

    def _budget_spent(self, slot: _Slot, request: GenerationRequest) -> bool:
        """max_tokens reached, or the context is full (prompt + completion = context)."""
        if request.max_tokens is not None and slot.completion_tokens >= request.max_tokens:
            return True
        return len(request.prompt_tokens) + slot.completion_tokens >= self.n_ctx_slot

    def _finish(self, slot: _Slot, reason: FinishReason) -> None:
        job, assembler = slot.job, slot.assembler
        assert job is not None and assembler is not None
        tail = assembler.finish()
        if tail:
            job.sink(TextDelta(tail, self._take_logprobs(slot)))
        slot.logprobs.clear()  # tokens whose text a stop string cut off, or the end token
        now = time.perf_counter_ns()
        first = slot.first_token_ns or now
        finished = Finished(
            reason,
            len(job.request.prompt_tokens),
            slot.completion_tokens,
            prompt_ns=first - slot.started_ns,
            generation_ns=now - first,
            prompt_tokens_cached=slot.cached,
            stop_sequence=assembler.matched,
        )
        # Free the slot first: whoever sees the request finished must see its slot free.
        self._release(slot)
        job.sink(finished)

    def _release(self, slot: _Slot, keep_cache: bool = True) -> None:
        self._free_sampler(slot)
        slot.job = None
        slot.assembler = None
        slot.pending = None
        slot.last_used = time.monotonic()
        if not keep_cache:
            lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cache.clear()

    def _fail_slots(self, slots: Sequence[_Slot], error: CorralError) -> None:
        for slot in slots:
            if slot.job is not None:
                if not slot.job.cancelled:
                    slot.job.sink(Failed(error))
                self._release(slot, keep_cache=False)

    def _fail_all(self, error: CorralError) -> None:
        self._fail_slots(self._slots, error)

    def _free_sampler(self, slot: _Slot) -> None:
        slot.matcher = None
        slot.logprobs.clear()
        if slot.sampler is not None:
            slot.sampler.free()
            slot.sampler = None

    def _longest_piece(self) -> int:
        """The longest token text in the vocabulary, in bytes (its pieces' lengths are
        asked for, not cached: ``_piece`` keeps only the pieces a request used)."""
        buf = ctypes.create_string_buffer(256)
        longest = 0
        for token in range(self._n_vocab):
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            longest = max(longest, abs(n))
        return longest

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    # --- embeddings ---------------------------------------------------------------------

    def _run_embed_job(self, job: _EmbedJob) -> None:
        try:
            result: list[list[float]] | BaseException = self._embed_all(job.inputs, job.normalize)
        except Exception:
            result = InternalError(new_request_id())
            log.exception("embedding failed [request %s]", result.request_id)
        job.loop.call_soon_threadsafe(_resolve, job.future, result)

    def _embed_all(
        self, inputs: Sequence[Sequence[int]], normalize: bool = True
    ) -> list[list[float]]:
        if not self.embedding_model:
            raise EngineError("this model does not produce embeddings")
        out: list[list[float]] = []
        group: list[Sequence[int]] = []
        for tokens in inputs:
            if len(tokens) > self._n_batch:
                raise EngineError(f"input of {len(tokens)} tokens exceeds {self._n_batch}")
            if group and (
                len(group) >= len(self._slots) or sum(map(len, group)) + len(tokens) > self._n_batch
            ):
                out += self._embed_group(group, normalize)
                group = []
            group.append(tokens)
        if group:
            out += self._embed_group(group, normalize)
        return out

    def _embed_group(
        self, group: Sequence[Sequence[int]], normalize: bool = True
    ) -> list[list[float]]:
        if self._memory:
            lc.llama_memory_clear(self._memory, True)
        seq_ids = self._batch.seq_id
        n = 0
        for seq, tokens in enumerate(group):
            k = len(tokens)
            self._tokens[n : n + k] = tokens
            self._pos[n : n + k] = np.arange(k)
            self._logits[n : n + k] = 1
            for i in range(n, n + k):
                seq_ids[i][0] = seq
            n += k
        self._batch.n_tokens = n
        status = lc.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status}")
        dim = self.capabilities.embedding_length
        vectors = []
        for seq in range(len(group)):
            ptr = lc.llama_get_embeddings_seq(self._ctx, seq)
            vec = np.ctypeslib.as_array(ptr, shape=(dim,)).astype(np.float64)
            norm = float(np.linalg.norm(vec)) if normalize else 0.0
            vectors.append((vec / norm if norm > 0 else vec).tolist())
        return vectors


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _worth_copying(shared: int, own: int, source_length: int) -> bool:
    """A copy that saves ``MIN_REUSE`` tokens of evaluation, and at least a quarter
    of whose tokens are used (llama-server's rule for its prompt cache)."""
    return shared - own >= MIN_REUSE and 4 * shared >= source_length


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _backend_ready = True


# ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
# (llama-cpp-python's own callback maps an older numbering and hides errors.)
_GGML_TO_LOGGING = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_llama_log = logging.getLogger("llama.cpp")
_last_level = logging.INFO


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Forward llama.cpp's messages to stderr at or above the ``llama.cpp`` logger's level."""
    global _last_level
    if level != 5:
        _last_level = _GGML_TO_LOGGING.get(level, logging.INFO)
    if _llama_log.isEnabledFor(_last_level):
        sys.stderr.write(text.decode(errors="replace"))
