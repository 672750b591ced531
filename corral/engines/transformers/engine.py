"""The worker's side of the transformers engine: ``load`` picks generation
(``chat.ChatEngine``) or, here, sentence-transformers embedding models and
cross-encoders, on PyTorch.

The model is loaded with sentence-transformers (``SentenceTransformer`` or
``CrossEncoder``), so its modules (pooling, a dense layer, normalisation: whatever its
``modules.json`` lists) run as their authors configured them. The worker hands over
token ids, tokenized by the model's own tokenizer; they are padded into tensors here
and run through the model's own forward pass.

Concurrent requests share forward passes (``batcher.Batcher``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from corral.engines.base import (
    Capabilities,
    Engine,
    EventSink,
    GenerationRequest,
    RequestHandle,
)
from corral.engines.transformers.batcher import Batcher, measure_call_cost
from corral.engines.transformers.descriptor import TransformersParams
from corral.errors import EngineLoadError, UnsupportedCapability
from corral.registry.records import Capability

log = logging.getLogger("corral.transformers")


def load(model_path: Path, params: TransformersParams) -> Engine:
    """The engine for a repo: generation for a causal language model, else embeddings
    or reranking (sentence-transformers)."""
    directory = model_path if model_path.is_dir() else model_path.parent
    config = _read_json(directory / "config.json")
    architecture = str((config.get("architectures") or [""])[0])
    if architecture.endswith(("ForCausalLM", "ForConditionalGeneration")):
        from corral.engines.transformers.chat import ChatEngine

        return ChatEngine(directory, params)
    return TransformersEngine(directory, params)


def longest_token_bytes(tokenizer: Any) -> int:
    """The longest token's text in bytes (``Capabilities.max_token_bytes``); for
    byte-level vocabularies an overestimate, which only makes the size bound laxer."""
    return max((len(t.encode()) for t in tokenizer.get_vocab()), default=0)


def device_and_dtype(params: TransformersParams) -> tuple[str, torch.dtype]:
    device = _device(params)
    return device, _dtype(params, device)


def _faster_cpu_dtype() -> torch.dtype:
    """bfloat16 where this CPU multiplies it clearly faster than float32 (AMX,
    AVX512-BF16: 3x on the machine the benchmarks ran on), else float32. Measured at
    load on a matrix product the size of a small model's layer, best of three."""

    def best(a: torch.Tensor, b: torch.Tensor) -> float:
        fastest = math.inf
        for _ in range(3):
            started = time.perf_counter()
            torch.matmul(a, b)
            fastest = min(fastest, time.perf_counter() - started)
        return fastest

    a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
    full = best(a, b)
    half = best(a.bfloat16(), b.bfloat16())
    chosen = torch.bfloat16 if half * 1.2 < full else torch.float32
    log.info(
        "dtype auto on CPU: %s (a 256x1024x1024 product took %.2f ms in float32, %.2f ms "
        "in bfloat16)",
        str(chosen).removeprefix("torch."),
        full * 1000,
        half * 1000,
    )
    return chosen


def _device(params: TransformersParams) -> str:
    if params.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if params.device == "cuda" and not torch.cuda.is_available():
        raise EngineLoadError("device is cuda, but PyTorch sees no CUDA device here.")
    return params.device


def _dtype(params: TransformersParams, device: str) -> torch.dtype:
    if params.dtype == "auto":
        return torch.float16 if device == "cuda" else _faster_cpu_dtype()
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        params.dtype
    ]


class TransformersEngine(Engine):
    def __init__(self, model_path: Path, params: TransformersParams) -> None:
        from sentence_transformers import CrossEncoder, SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # log noise

        torch.set_num_threads(params.threads)
        self.device = _device(params)
        self.dtype = _dtype(params, self.device)
        directory = model_path if model_path.is_dir() else model_path.parent
        config = _read_json(directory / "config.json")
        architecture = str((config.get("architectures") or [""])[0])
        self.reranker = architecture.endswith("ForSequenceClassification")
        kwargs = {"torch_dtype": self.dtype}
        try:
            if self.reranker:
                self._cross = CrossEncoder(
                    str(directory), device=self.device, local_files_only=True, model_kwargs=kwargs
                )
                self._tokenizer = self._cross.tokenizer
                max_length = self._cross.max_length or int(
                    config.get("max_position_embeddings", 512)
                )
                self._sentence = None
                width = 1
            else:
                self._sentence = SentenceTransformer(
                    str(directory), device=self.device, local_files_only=True, model_kwargs=kwargs
                )
                self._tokenizer = self._sentence.tokenizer
                max_length = self._sentence.max_seq_length
                width = int(self._sentence.get_sentence_embedding_dimension() or 0)
                self._cross = None
        except (OSError, ValueError) as exc:
            raise EngineLoadError(
                f"cannot load {directory} with sentence-transformers: {exc}"
            ) from exc
        context = min(params.context_length, max_length) if params.context_length else max_length
        self._sep = self._tokenizer.sep_token_id
        self._pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        self._needs_types = "token_type_ids" in self._tokenizer.model_input_names
        vocab = len(self._tokenizer)
        self.capabilities = Capabilities(
            offers=frozenset({Capability.RERANK if self.reranker else Capability.EMBEDDINGS}),
            context_length=context,
            slots=params.slots,
            embedding_length=width,
            vocab_size=vocab,
            max_token_bytes=longest_token_bytes(self._tokenizer),
        )
        self.chat_template = None
        self.bos_text = self._tokenizer.bos_token or ""
        self.eos_text = self._tokenizer.eos_token or ""
        run = self._score if self.reranker else self._embed
        self._batcher = Batcher(run, params.batch_inputs, params.batch_wait_ms / 1000)
        probe = self.tokenize(" ".join(["the"] * 14), add_special=True, parse_special=False)
        self._batcher.call_cost = measure_call_cost(run, probe)
        log.info(
            "loaded %s on %s (%s) as a %s, context %d, a forward call worth %.0f positions",
            directory.name,
            self.device,
            str(self.dtype).removeprefix("torch."),
            "cross-encoder" if self.reranker else "sentence-transformers model",
            context,
            self._batcher.call_cost,
        )

    # --- tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return ids

    def rerank_tokens(self, query: str, document: str) -> list[int]:
        if not self.reranker:
            return super().rerank_tokens(query, document)
        ids: list[int] = self._tokenizer(query, document)["input_ids"]
        return ids

    # --- embeddings and scores --------------------------------------------------------

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        if self._sentence is None:
            raise UnsupportedCapability("This model is a reranker; it scores documents.")
        return await self._batcher.submit([list(ids) for ids in inputs])

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        if self._cross is None:
            return await super().rerank(inputs)
        return await self._batcher.submit([list(ids) for ids in inputs])

    def _features(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        types = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
            if self._needs_types and self._sep is not None and self._sep in ids:
                # A pair: the second segment starts after the first separator (BERT).
                start = ids.index(self._sep) + 1
                types[row, start : len(ids)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if self._needs_types:
            features["token_type_ids"] = types
        return {k: v.to(self.device) for k, v in features.items()}

    def _embed(self, batch: list[list[int]]) -> list[list[float]]:
        assert self._sentence is not None
        with torch.inference_mode():
            out = self._sentence(self._features(batch))["sentence_embedding"]
        vectors: list[list[float]] = out.float().cpu().tolist()
        return vectors

    def _score(self, batch: list[list[int]]) -> list[float]:
        assert self._cross is not None
        with torch.inference_mode():
            logits = self._cross(self._features(batch))["scores"]
            scores = self._cross.activation_fn(logits).float().cpu()
        return [float(s) for s in scores.reshape(len(batch), -1)[:, 0]]

    # --- generation: not on this engine yet --------------------------------------------

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        raise UnsupportedCapability(
            "This model is an embedding or reranking model; it cannot generate text.",
            param="model",
        )

    def stats(self) -> dict[str, int]:
        b = self._batcher
        return {"forward_passes": b.passes, "batched_inputs": b.inputs, "forward_ns": b.forward_ns}

    def close(self) -> None:
        self._batcher.close()


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineLoadError(f"cannot read {path.name}: {exc}") from exc
    return data if isinstance(data, dict) else {}
