"""Constrained decoding on llama.cpp: llguidance token masks applied to each slot's logits.

Each constrained slot holds an ``LLMatcher`` (its grammar's parse state). Every step,
the mask of tokens its grammar allows next is computed while ``llama_decode`` runs
(the matchers already know every token they will be asked about; llguidance works on
another thread, and ``llama_decode`` releases the GIL), then written over that slot's
row of logits as -inf before its sampler chain draws. So the chain only ever sees
allowed tokens: penalties, top-k/top-p and temperature act within the grammar, and the
token drawn is always one the matcher accepts.

The llguidance tokenizer is built once per model (a walk over the vocabulary: 0.1 s
at 32k tokens) on a thread of its own as the model loads. Compiled grammars are kept
by text (``_COMPILED`` of them) so a schema sent again, or the check on the request's
thread followed by the slot's own copy, compiles once.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llama_cpp as lc
import numpy as np
from llguidance import LLExecutor, LLMatcher, LLTokenizer

from corral.engines.guidance import CompiledGrammars
from corral.errors import EngineError

_COMPILED = 32
log = logging.getLogger("corral.engine")


class Guide:
    """One model's llguidance tokenizer, compiled grammars and per-step token masks."""

    def __init__(self, vocab: Any, n_vocab: int, eog: set[int], rows: int) -> None:
        self._n_vocab = n_vocab
        self._tokenizer: LLTokenizer | None = None
        self._build_error: Exception | None = None
        self._built = threading.Thread(
            target=self._build, args=(vocab, sorted(eog)), name="llguidance-vocab", daemon=True
        )
        self._built.start()
        self._grammars = CompiledGrammars(self._built_tokenizer, size=_COMPILED)
        self._masks = np.zeros((rows, (n_vocab + 31) // 32), dtype=np.int32)
        self._executor = LLExecutor(num_threads=1)
        self._pool: ThreadPoolExecutor | None = None

    def _build(self, vocab: Any, eog: list[int]) -> None:
        try:
            self._tokenizer = tokenizer_from_vocab(vocab, self._n_vocab, eog)
        except Exception as exc:  # reported to each request that needs it
            self._build_error = exc
            log.exception("could not build llguidance's tokenizer for this model")

    def matcher(self, grammar: str, *, param: str) -> LLMatcher:
        """A fresh matcher for ``grammar``; a 400 naming ``param`` if it does not compile."""
        return self._grammars.matcher(grammar, param=param)

    def _built_tokenizer(self) -> LLTokenizer:
        self._built.join()
        if self._tokenizer is None:
            raise EngineError(f"structured output is unavailable here: {self._build_error}")
        return self._tokenizer

    def start_masks(self, rows: Sequence[tuple[LLMatcher, int]]) -> Future[None] | None:
        """Begin computing each matcher's mask into its row; wait on the result."""
        if not rows:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="llguidance-mask")
        masks = self._masks
        return self._pool.submit(
            self._executor.unsafe_compute_mask_ptr,
            list(rows),
            masks.ctypes.data,
            masks.shape[1] * 4,
            masks.shape[0],
        )

    def apply(self, ctx: Any, index: int, row: int) -> bool:
        """Mask the logits at ``index`` of the last batch; False if nothing is allowed."""
        allowed = np.unpackbits(
            self._masks[row].view(np.uint8), count=self._n_vocab, bitorder="little"
        ).view(np.bool_)
        if not allowed.any():
            return False
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        np.copyto(logits, -np.inf, where=~allowed)
        return True

    def close(self) -> None:
        self._built.join()  # it reads the vocabulary the engine is about to free
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def tokenizer_from_vocab(vocab: Any, n_vocab: int, eog: list[int]) -> LLTokenizer:
    """llguidance's tokenizer for a llama.cpp vocabulary.

    What ``llguidance.llamacpp.lltokenizer_from_vocab`` does, on llama.cpp's current
    API (that helper calls ``llama_token_get_attr``, which llama-cpp-python deprecates):
    every token's bytes, special tokens marked with a leading 0xFF, and llama.cpp's own
    tokenize function for the text llguidance needs tokenized.
    """
    buffer = ctypes.create_string_buffer(16 * 1024)
    tokens: list[bytes] = []
    special = lc.LLAMA_TOKEN_ATTR_CONTROL
    for token in range(n_vocab):
        n = lc.llama_token_to_piece(vocab, token, buffer, len(buffer) - 1, 0, True)
        if n < 0:
            raise ValueError(f"token {token} is longer than {len(buffer) - 1} bytes")
        piece = buffer.raw[:n]
        attr = lc.llama_vocab_get_attr(vocab, token)
        if attr & special or (
            attr & lc.LLAMA_TOKEN_ATTR_USER_DEFINED
            and piece.startswith(b"<")
            and piece.endswith(b">")
        ):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokenize = ctypes.cast(lc.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    from_llamacpp = getattr(LLTokenizer, "from_llamacpp")  # noqa: B009 (not in the stubs)
    tokenizer: LLTokenizer = from_llamacpp(
        tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=eog, slices=None
    )
    return tokenizer
