"""Text generation on the transformers engine, through transformers' own continuous
batching (``ContinuousBatchingManager``, what ``transformers serve`` runs).

Requests join and leave the running batch between steps, as on the llama.cpp engine.
The KV cache is paged and sized here, not left to the library's "most of free
memory": ``slots`` requests of ``context_length`` tokens (``kv_blocks``), which is
also what the descriptor's memory estimate counts.

Sampling is per request through the manager's per-request processors: temperature,
top_p and top_k; temperature 0 is greedy (top_k 1, which picks the most likely token
as ``generate(do_sample=False)`` does). Parameters the manager cannot apply per
request (min_p, penalties, logit bias, a seed, logprobs) are refused by the
descriptor's precheck before a model is loaded; if one arrives anyway the request
fails with the same 400, never silently ignored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from corral.engines.base import (
    Capabilities,
    Engine,
    EventSink,
    Failed,
    Finished,
    GenerationRequest,
    RequestHandle,
    TextDelta,
)
from corral.engines.text import TextAssembler
from corral.engines.transformers.descriptor import PAGE_SIZE, TransformersParams, kv_blocks, refusal
from corral.engines.transformers.guided import GrammarMasks
from corral.engines.transformers.sequential import Sequential
from corral.errors import EngineError, EngineLoadError, InvalidRequest
from corral.registry.records import Capability

log = logging.getLogger("corral.transformers")


class _Request(RequestHandle):
    def __init__(self, engine: ChatEngine, request: GenerationRequest, sink: EventSink) -> None:
        self.engine = engine
        self.request = request
        self.sink = sink
        self.id = "corral-" + uuid.uuid4().hex[:16]
        self.assembler = TextAssembler(request.stop)
        self.sent_tokens = 0
        self.decoded = ""  # the text of the tokens so far, as the tokenizer decodes it
        self.done = False
        self.started = time.perf_counter_ns()

    def cancel(self) -> None:
        if not self.done:
            self._end()
            self.engine.manager.cancel_request(self.id)

    def _end(self) -> None:
        self.done = True
        self.engine.guide.detach(self.id)

    def on_result(self, result: Any) -> None:
        """The manager's answer so far (on the worker's event loop)."""
        if self.done:
            return
        if result.error is not None:
            self._end()
            self.sink(Failed(EngineError(f"generation failed: {result.error}")))
            return
        tokens: list[int] = list(result.generated_tokens)
        eos = self.engine.eos_ids
        ended_by_eos = bool(tokens) and tokens[-1] in eos and not self.request.ignore_eos
        visible = tokens[:-1] if ended_by_eos else tokens
        if len(visible) > self.sent_tokens:
            text = self.engine.decode(visible)
            if not text.endswith("\ufffd"):  # a character split across tokens: wait
                piece = self.assembler.feed(text[len(self.decoded) :].encode())
                self.decoded, self.sent_tokens = text, len(visible)
                if piece:
                    self.sink(TextDelta(piece))
        if self.assembler.stopped:
            self._end()
            self.engine.manager.cancel_request(self.id)
            self._finish("stop", len(visible))
            return
        if result.is_finished():
            self._end()
            tail = self.assembler.finish()
            if tail:
                self.sink(TextDelta(tail))
            limit = self.request.max_tokens or self.engine.room(self.request)
            reason = "length" if not ended_by_eos and len(tokens) >= limit else "stop"
            self._finish(reason, len(tokens))

    def _finish(self, reason: str, completion: int) -> None:
        self.sink(
            Finished(
                reason,  # type: ignore[arg-type]
                prompt_tokens=len(self.request.prompt_tokens),
                completion_tokens=completion,
                stop_sequence=self.assembler.matched,
                generation_ns=time.perf_counter_ns() - self.started,
            )
        )


class ChatEngine(Engine):
    def __init__(self, directory: Path, params: TransformersParams) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from corral.engines.transformers.engine import device_and_dtype, longest_token_bytes

        self.device, self.dtype = device_and_dtype(params)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(directory), dtype=self.dtype, local_files_only=True
            )
            self.model = model.to(self.device)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            raise EngineLoadError(f"cannot load {directory} with transformers: {exc}") from exc
        self.model.eval()
        config = self.model.config
        trained = int(getattr(config, "max_position_embeddings", 0) or 4096)
        context = min(params.context_length, trained) if params.context_length else trained
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
        template = self.tokenizer.chat_template
        self.chat_template = template if isinstance(template, str) else None
        self.bos_text = self.tokenizer.bos_token or ""
        self.eos_text = self.tokenizer.eos_token or ""
        offers = {Capability.COMPLETION}
        if self.chat_template:
            offers.add(Capability.CHAT)
        vocab = self.vocab = len(self.tokenizer)
        self.capabilities = Capabilities(
            offers=frozenset(offers),
            context_length=context,
            slots=params.slots,
            vocab_size=vocab,
            max_token_bytes=longest_token_bytes(self.tokenizer),
            structured_output=True,
        )
        # Sampling processors exist only if the base config enables them (a temperature
        # other than 1, a top_k, a top_p): each request then sets its own values.
        generation = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=True,
            temperature=0.7,
            top_k=50,
            top_p=0.9,
            max_new_tokens=context,
            eos_token_id=sorted(self.eos_ids) or -1,
            pad_token_id=self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else next(iter(self.eos_ids), 0),
        )
        pad = generation.pad_token_id
        self.guide = GrammarMasks(self.tokenizer, int(config.vocab_size))
        self.manager: Any
        self.batched = False
        if params.continuous_batching:
            try:
                self.manager = self._batching(generation, params, context)
                self.batched = True
            except Exception as exc:  # an architecture its paged attention cannot run
                log.warning(
                    "continuous batching cannot run %s (%s): generating one request at a time",
                    directory.name,
                    exc,
                )
        if not self.batched:
            self.manager = Sequential(self.model, pad)
            self.capabilities = replace(self.capabilities, structured_output=False)
        self.context = context
        self._served = 0
        log.info(
            "loaded %s on %s (%s) for generation, context %d, %d slots, %s",
            directory.name,
            self.device,
            str(self.dtype).removeprefix("torch."),
            context,
            params.slots,
            "continuous batching" if self.batched else "one request at a time",
        )

    def _batching(self, generation: Any, params: TransformersParams, context: int) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        batching = ContinuousBatchingConfig(
            page_size=PAGE_SIZE,
            num_blocks=kv_blocks(params.slots, context, PAGE_SIZE),
            max_batch_tokens=max(256, params.slots * 16),
            per_request_processors=True,
            auto_switch_to_flash=False,
        )
        manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=batching
        )
        # Structured output: llguidance's masks, first among the batch's processors so
        # that sampling acts within the grammar (guided.py).
        processors = manager.logit_processor
        processors.logits_processor.insert(0, self.guide)
        processors.tensors_required += 1
        processors.do_processing = True
        manager.start()
        return manager

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return ids

    def check_grammar(self, grammar: str, *, param: str) -> None:
        if not self.batched:
            super().check_grammar(grammar, param=param)  # the refusal: no masks here
        self.guide.compile(grammar, param)

    def decode(self, tokens: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        return text if isinstance(text, str) else "".join(text)

    def room(self, request: GenerationRequest) -> int:
        return max(1, self.context - len(request.prompt_tokens))

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        refused = unsupported_sampling(request)
        if refused is not None:
            raise InvalidRequest(refused[1], param=refused[0])
        job = _Request(self, request, sink)
        if request.grammar is not None:
            self.guide.attach(job.id, self.guide.compile(request.grammar, "response_format"))
        sampling = request.sampling
        kwargs: dict[str, Any] = (
            {"top_k": 1}
            if sampling.temperature <= 0
            else {
                "temperature": float(sampling.temperature),
                "top_p": float(sampling.top_p) if 0 < sampling.top_p < 1 else 1.0,
                "top_k": int(sampling.top_k) if sampling.top_k > 0 else self.vocab,
            }
        )
        max_new = min(request.max_tokens or self.room(request), self.room(request))
        eos: list[int] | int = -1 if request.ignore_eos else sorted(self.eos_ids) or -1
        if not self.batched:
            self.manager.add(job, list(request.prompt_tokens), max_new, eos, kwargs)
            self._served += 1
            return job
        self.manager.register_result_handler(job.id, job.on_result)
        added = self.manager.add_request(
            list(request.prompt_tokens),
            request_id=job.id,
            max_new_tokens=max_new,
            streaming=True,
            eos_token_id=eos,
            **kwargs,
        )
        if added is None:
            self.guide.detach(job.id)
            raise EngineError("the transformers engine is not accepting requests")
        self._served += 1
        return job

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        raise InvalidRequest("This model generates text; it does not produce embeddings.")

    def stats(self) -> dict[str, int]:
        return {"requests": self._served}

    def close(self) -> None:
        try:
            if self.batched:
                self.manager.stop(block=True, timeout=5)
            else:
                self.manager.stop()
        except Exception:  # closing: nothing to report to
            log.exception("stopping the continuous batching manager")


def unsupported_sampling(request: GenerationRequest) -> tuple[str, str] | None:
    """(parameter, message) for what continuous batching cannot apply per request."""
    s = request.sampling
    checks = (
        ("min_p", s.min_p > 0),
        ("repeat_penalty", s.repeat_penalty != 1.0),
        ("presence_penalty", s.presence_penalty != 0.0),
        ("frequency_penalty", s.frequency_penalty != 0.0),
        ("logit_bias", bool(s.logit_bias)),
        ("seed", s.seed is not None),
        ("logprobs", request.logprobs is not None),
    )
    for param, used in checks:
        if used:
            return param, refusal(param)
    return None
