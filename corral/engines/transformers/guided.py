"""Structured output inside transformers' continuous batching: llguidance masks per row.

The manager applies a list of logits processors to every step's batch, and lets a
processor see which requests the rows belong to (``prepare_tensor_args`` gets them in
row order). ``GrammarMasks`` is one of those processors, placed first in the list:

- before each step it brings every constrained request's ``LLMatcher`` up to date with
  the tokens that request has generated so far, and computes the mask of tokens its
  grammar allows next (llguidance, a few microseconds for most grammars);
- in the step it sets the logits of every other token to -inf, before temperature,
  top-k and top-p act, so sampling only ever draws a token the grammar accepts.

Rows of unconstrained requests are left alone. A request whose grammar is complete
is allowed only its end-of-sequence tokens, which ends it.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from llguidance import LLMatcher, LLTokenizer
from llguidance.hf import from_tokenizer
from llguidance.torch import (
    allocate_token_bitmask,
    apply_token_bitmask_inplace,
    fill_next_token_bitmask,
)
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from corral.engines.guidance import CompiledGrammars


class GrammarMasks(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {}  # noqa: RUF012  (the base class declares it so)
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.lltokenizer: LLTokenizer = from_tokenizer(tokenizer, n_vocab=vocab_size)
        self._grammars = CompiledGrammars(lambda: self.lltokenizer)
        self.vocab_size = vocab_size
        self._lock = threading.Lock()
        self._matchers: dict[str, tuple[LLMatcher, list[int]]] = {}  # id -> (matcher, consumed)
        self._rows: torch.Tensor | None = None  # this step's masks, row by row (or None)
        self._constrained: list[int] = []  # which rows have a grammar

    # --- requests ---------------------------------------------------------------------

    def compile(self, grammar: str, param: str) -> LLMatcher:
        """A fresh matcher for ``grammar``, or the 400 naming ``param`` if it does not
        compile; compiled once per grammar text (the request's check, then its slot)."""
        return self._grammars.matcher(grammar, param=param)

    def attach(self, request_id: str, matcher: LLMatcher) -> None:
        with self._lock:
            self._matchers[request_id] = (matcher, [0])

    def detach(self, request_id: str) -> None:
        with self._lock:
            self._matchers.pop(request_id, None)

    def accepting(self, request_id: str) -> bool:
        with self._lock:
            found = self._matchers.get(request_id)
        return found is None or found[0].is_accepting() or found[0].is_stopped()

    # --- the manager's side (its generation thread) -----------------------------------

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.zero_()

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        rows: list[int] = []
        masks = None
        with self._lock:
            for row, future in enumerate(requests_with_new_token):
                found = self._matchers.get(future.state.request_id)
                if found is None:
                    continue
                matcher, consumed = found
                generated = future.state.generated_tokens
                if len(generated) > consumed[0]:
                    matcher.consume_tokens(list(generated[consumed[0] :]))
                    consumed[0] = len(generated)
                if masks is None:
                    masks = allocate_token_bitmask(len(requests_with_new_token), self.vocab_size)
                fill_next_token_bitmask(matcher, masks, row)
                rows.append(row)
        self._rows, self._constrained = masks, rows
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        masks, rows = self._rows, self._constrained
        if masks is None or not rows:
            return scores
        index = torch.tensor(rows, dtype=torch.long)
        constrained = scores[index].float()
        apply_token_bitmask_inplace(constrained, masks[index])
        scores[index] = constrained.to(scores.dtype)
        return scores
