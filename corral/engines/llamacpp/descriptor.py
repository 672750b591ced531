"""The gateway's side of the llama.cpp engine: GGUF models, their parameters, their memory.

Imports no engine library: the gateway uses it to route, size and start workers, and
to refuse an output constraint that llguidance would not enforce before a model is
loaded for it.

The memory estimate is read from the GGUF header facts recorded at import: weights
(the file, which llama.cpp maps and touches entirely), the KV cache for every slot's
context, llama.cpp's compute and output buffers, and the worker process itself. After
each load the scheduler compares it with the worker's measured RSS, logs both and
shows both in ``ps``. Calibration figures are in ``corral/scheduler/design.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from corral.engines.descriptor import (
    EngineDescriptor,
    EngineParams,
    MemoryEstimate,
    default_threads,
)
from corral.engines.structured import precheck_constraint
from corral.registry.records import Capability, ModelRecord

MiB = 1 << 20
# A worker process before any model: Python, uvicorn, numpy and llama.cpp's library.
WORKER_BASE_BYTES = 80 * MiB
KV_BYTES_PER_VALUE = 2  # f16 K and V caches (llama.cpp's default)
CTX_PAD = 256  # llama.cpp rounds each KV stream up to a multiple of this
# The default prompt cache holds what the slots hold, but never more than this.
PROMPT_CACHE_AUTO_CAP = 1024 * MiB
TEXT = frozenset({Capability.CHAT, Capability.COMPLETION})
EMBEDDINGS = frozenset({Capability.EMBEDDINGS})
RERANK = frozenset({Capability.RERANK})


class LlamaCppParams(EngineParams):
    threads: int = Field(
        default_factory=default_threads,
        ge=1,
        description="CPU threads per llama.cpp worker (generation and prompt processing).",
    )
    batch_size: int = Field(
        512, ge=32, description="Most tokens one llama_decode step processes (n_batch)."
    )
    flash_attention: Literal["auto", "on", "off"] = Field(
        "auto",
        description="llama.cpp flash attention; auto = wherever the backend supports it "
        "(+20-25% decode throughput on CPU, bench/RESULTS.md).",
    )
    prompt_cache_mib: int | None = Field(
        None,
        ge=0,
        description="RAM for the KV state of prompts that left their slot, reused by later "
        "requests that share their prefix (0 = off; default: as many tokens as the slots "
        f"hold, at most {PROMPT_CACHE_AUTO_CAP // MiB} MiB).",
    )


def prompt_cache_limits(
    params: LlamaCppParams, n_ctx_slot: int, embedding: bool
) -> tuple[int, int | None]:
    """The prompt cache's (bytes, tokens) limits for a worker with these settings."""
    if embedding:
        return 0, 0
    if params.prompt_cache_mib is not None:
        return params.prompt_cache_mib * MiB, None
    return PROMPT_CACHE_AUTO_CAP, n_ctx_slot * params.slots


class LlamaCppDescriptor(EngineDescriptor):
    name = "llamacpp"
    formats = frozenset({"gguf"})
    params_model = LlamaCppParams
    worker_engine = "corral.engines.llamacpp.engine:LlamaCppEngine"

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        if record.info.reranker:
            return RERANK
        return EMBEDDINGS if record.info.embedding else TEXT

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        assert isinstance(params, LlamaCppParams)
        info = record.info
        train_ctx = info.context_length or 4096
        cells = _pad(min(params.context_length or train_ctx, train_ctx))
        # Embedding workers keep one context of the model's size and no per-slot streams.
        slots = 1 if info.embedding else params.slots
        kv_width = info.head_count_kv * (info.key_length + info.value_length)
        if kv_width == 0:  # manifest without shape facts: assume a KV cache like the weights'
            kv = record.size // 4
        else:
            kv = info.block_count * cells * slots * kv_width * KV_BYTES_PER_VALUE
        ubatch = max(params.batch_size, params.slots)
        buffers = ubatch * 4 * (info.vocab_size + 6 * info.embedding_length)
        if info.embedding:
            prompt_cache = 0
        elif params.prompt_cache_mib is not None:
            prompt_cache = params.prompt_cache_mib * MiB
        else:
            prompt_cache = min(kv, PROMPT_CACHE_AUTO_CAP)
        return MemoryEstimate(
            weights=record.size,
            kv_cache=kv,
            buffers=buffers,
            process=WORKER_BASE_BYTES,
            prompt_cache=prompt_cache,
        )

    def precheck(
        self, record: ModelRecord, capability: Capability, body: Mapping[str, Any]
    ) -> None:
        """Refuse an output constraint llguidance would not enforce, before any load."""
        precheck_constraint(capability, body)


def _pad(n: int) -> int:
    return -(-n // CTX_PAD) * CTX_PAD


descriptor = LlamaCppDescriptor()
