"""The gateway's side of the transformers engine: safetensors repos, their parameters,
their memory. Imports neither torch nor transformers: those are the worker's, and an
optional extra (``pip install 'corral[transformers]'``).

What a repo can do is read from its registry facts (``config.json`` and, for
sentence-transformers repos, ``modules.json``): a ``*ForSequenceClassification``
model with one label is a cross-encoder (reranking), a sentence-transformers repo or
an encoder is an embedding model. Causal language models (chat) are the next step of
this engine; until then they are refused by name.

The memory estimate: the weights at the dtype the worker will use (float32 on CPU
unless asked otherwise), activations for a batch of ``batch_inputs`` sequences of the
model's length, and the process with PyTorch loaded (measured: ``WORKER_BASE_BYTES``).
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
    modules_installed,
)
from corral.engines.structured import precheck_constraint
from corral.errors import InvalidRequest
from corral.registry.records import Capability, ModelRecord

MiB = 1 << 20
PAGE_SIZE = 256  # tokens per page of the continuous-batching KV cache
# A worker with torch, transformers and sentence-transformers imported, no model yet
# (measured on this machine: ~330 MiB RSS with torch 2.13 CPU).
WORKER_BASE_BYTES = 360 * MiB
# A generation worker: transformers' model classes, the continuous-batching manager
# and its buffers besides (measured: 467 MiB RSS with a 0.4M-parameter Llama).
GENERATION_BASE_BYTES = 460 * MiB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
EMBEDDINGS = frozenset({Capability.EMBEDDINGS})
TEXT = frozenset({Capability.CHAT, Capability.COMPLETION})
COMPLETION = frozenset({Capability.COMPLETION})
RERANK = frozenset({Capability.RERANK})
EXTRA = "pip install 'corral[transformers]'"


class TransformersParams(EngineParams):
    # Requests at once: an embedding model's forward pass takes many inputs, so as many
    # requests may be in the worker as one pass takes (4 held it to 4 per pass: 0.5x
    # sentence-transformers' own throughput, bench/RESULTS.md).
    slots: int = Field(
        32, ge=1, le=256, description="Requests one model takes at once (inputs of one pass)."
    )
    threads: int = Field(
        default_factory=default_threads, ge=1, description="CPU threads PyTorch may use."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs; auto = CUDA when present, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights' dtype; auto = float16 on CUDA; on CPU bfloat16 if this CPU "
        "runs it clearly faster than float32 (measured at load), else float32.",
    )
    batch_inputs: int = Field(
        32, ge=1, le=4096, description="Most inputs one forward pass takes (embeddings)."
    )
    continuous_batching: bool = Field(
        True,
        description="Generate through transformers' continuous batching; off (or a model "
        "it cannot run) = one request at a time through generate().",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a forward pass that is not full waits for more inputs "
        "(0 = never): a few ms of latency for much larger passes under load.",
    )


# Request fields continuous batching cannot apply per request, with their neutral value.
UNSUPPORTED = {
    "min_p": 0.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logit_bias": None,
    "seed": None,
    "logprobs": None,
    "top_logprobs": None,
}


def refusal(param: str) -> str:
    return (
        f"{param} is not supported by the transformers engine (its continuous batching "
        "applies temperature, top_p, top_k and output constraints per request); leave it "
        "out, or use a GGUF of this model on llama.cpp."
    )


def kv_blocks(slots: int, context: int, page_size: int = PAGE_SIZE) -> int:
    """Pages of KV cache for ``slots`` requests of ``context`` tokens each."""
    return max(2, -(-slots * context // page_size) + 1)


def torch_build_bytes() -> int:
    """What a CUDA build of torch adds to every worker's RSS, GPU or not: its CUDA
    libraries are mapped at import (measured: +417 MiB against the CPU build). Read
    from the installed version ("2.13.0+cpu" is the CPU build), without importing it."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return 0
    return 0 if "+cpu" in version else 420 * MiB


def engine_installed() -> bool:
    """Whether this environment has the extra (checked without importing torch)."""
    return modules_installed("torch", "transformers")


class TransformersDescriptor(EngineDescriptor):
    name = "transformers"
    formats = frozenset({"safetensors"})
    params_model = TransformersParams
    worker_engine = "corral.engines.transformers.engine:load"

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        if record.info.reranker:
            return RERANK
        if record.info.embedding:
            return EMBEDDINGS
        return TEXT if record.info.has_chat_template else COMPLETION

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        assert isinstance(params, TransformersParams)
        info = record.info
        dtype = "float32" if params.dtype == "auto" else params.dtype
        weights = info.parameters * DTYPE_BYTES[dtype] if info.parameters else record.size
        length = min(info.context_length or 512, params.context_length or 512)
        # Activations of one forward pass: hidden states and attention scores per layer
        # kept by inference mode only layer by layer (two of them alive at a time).
        hidden = info.embedding_length or 768
        heads = info.head_count or 12
        if not (info.embedding or info.reranker):  # generation: the paged KV cache
            context = self.context_length(record, params) or 4096
            head_dim = info.key_length or (hidden // heads)
            per_token = info.block_count * 2 * (info.head_count_kv or heads) * head_dim
            kv = kv_blocks(params.slots, context) * PAGE_SIZE * per_token * DTYPE_BYTES[dtype]
            logits = max(256, params.slots * 16) * (info.vocab_size or 32000) * 4 * 2
            return MemoryEstimate(
                weights=weights,
                kv_cache=kv,
                buffers=logits,
                process=GENERATION_BASE_BYTES + torch_build_bytes(),
            )
        per_sequence = length * (hidden * 4 + heads * length) * DTYPE_BYTES[dtype]
        buffers = 2 * params.batch_inputs * per_sequence
        return MemoryEstimate(
            weights=weights,
            kv_cache=0,
            buffers=buffers,
            process=WORKER_BASE_BYTES + torch_build_bytes(),
        )

    def unavailable(self, record: ModelRecord) -> str | None:
        if not engine_installed():
            return (
                f"The model '{record.name}' runs on the transformers engine, which is not "
                f"installed here: {EXTRA}."
            )
        return None

    def precheck(
        self, record: ModelRecord, capability: Capability, body: Mapping[str, Any]
    ) -> None:
        """Refuse, by name, a sampling parameter continuous batching cannot apply, and an
        output constraint llguidance would not enforce, before any load."""
        if capability not in (Capability.CHAT, Capability.COMPLETION):
            return
        for param, neutral in UNSUPPORTED.items():
            value = body.get(param)
            if value is not None and value != neutral and value is not False and value != {}:
                raise InvalidRequest(refusal(param), param=param)
        precheck_constraint(capability, body)


descriptor = TransformersDescriptor()
