"""Prompt state that outlives its slot, bounded in RAM (llama-server's ``--cache-ram``).

A slot keeps the KV cells of the last sequence it ran, so a request that extends it
(a chat resending its history) evaluates only its new tokens. Slots are few, though:
with more conversations than slots a history is overwritten before its next turn, and
a prefix many requests share sits only in the slots that ran it. So before a slot's
cells are overwritten the engine copies them out (``llama_state_seq_get_data``) into
this cache, and a new request restores the entry, or another slot's sequence, that
holds the longest prefix of its prompt (``llama_state_seq_set_data``) instead of
evaluating that prefix again. Copying a token's cells costs about a hundredth of
evaluating it.

This module keeps the entries and chooses among them; it never calls llama.cpp, so its
rules are tested without a model. An entry moves into the slot that restores it (it is
not kept twice, as in llama-server); an entry that a newer one extends is dropped; the
oldest go first when a limit is reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class CachedPrompt:
    tokens: list[int]
    state: np.ndarray  # uint8: llama_state_seq_get_data's serialisation of the cells

    @property
    def size(self) -> int:
        return len(self.state)


class PromptCache:
    """Saved sequences, oldest first, within ``limit_bytes`` and ``limit_tokens``."""

    def __init__(self, limit_bytes: int, limit_tokens: int | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.limit_tokens = limit_tokens
        self._entries: list[CachedPrompt] = []
        self.saved = 0  # entries ever added
        self.restored = 0  # entries ever taken back into a slot

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0 and self.limit_tokens != 0

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self._entries)

    @property
    def tokens(self) -> int:
        return sum(len(entry.tokens) for entry in self._entries)

    def longest(self, prompt: Sequence[int]) -> tuple[CachedPrompt | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and that length."""
        best: CachedPrompt | None = None
        shared = 0
        for entry in self._entries:
            n = common_prefix(entry.tokens, prompt)
            if n > shared:
                best, shared = entry, n
        return best, shared

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether some entry already starts with all of ``tokens``."""
        return any(common_prefix(entry.tokens, tokens) == len(tokens) for entry in self._entries)

    def fits(self, n_tokens: int, size: int) -> bool:
        """Whether one entry of this size could be kept at all."""
        if not self.enabled or size > self.limit_bytes:
            return False
        return self.limit_tokens is None or n_tokens <= self.limit_tokens

    def add(self, tokens: Sequence[int], state: np.ndarray) -> bool:
        """Keep ``state`` for ``tokens``, making room by dropping the oldest entries."""
        if not self.fits(len(tokens), len(state)) or self.holds(tokens):
            return False
        self._entries = [
            entry
            for entry in self._entries
            if common_prefix(entry.tokens, tokens) < len(entry.tokens)  # not a prefix of it
        ]
        self._entries.append(CachedPrompt(list(tokens), state))
        self.saved += 1
        self._trim()
        return True

    def take(self, entry: CachedPrompt) -> None:
        """``entry`` moves into a slot; the cache no longer holds it."""
        self._entries.remove(entry)
        self.restored += 1

    def _trim(self) -> None:
        while self._entries and (
            self.bytes > self.limit_bytes
            or (self.limit_tokens is not None and self.tokens > self.limit_tokens)
        ):
            self._entries.pop(0)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share.

    By bisection over slice comparisons, which run in C: a conversation's history is
    thousands of tokens, compared with every slot and cache entry at each admission
    (a Python loop over them cost milliseconds per request).
    """
    x = a if isinstance(a, list) else list(a)
    y = b if isinstance(b, list) else list(b)
    n = min(len(x), len(y))
    if x[:n] == y[:n]:
        return n
    lo, hi = 0, n  # x[:lo] == y[:lo], and they differ before hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x[lo:mid] == y[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
