"""The prompt cache's rules: which entry serves a prompt, what is kept, what goes first."""

from __future__ import annotations

import numpy as np

from corral.engines.llamacpp.prompt_cache import PromptCache, common_prefix


def state(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.uint8)


def test_longest_shared_prefix_wins() -> None:
    cache = PromptCache(limit_bytes=1000)
    cache.add([1, 2, 3], state(10))
    cache.add([1, 2, 4, 5], state(10))
    entry, shared = cache.longest([1, 2, 4, 9])
    assert entry is not None and entry.tokens == [1, 2, 4, 5] and shared == 3
    assert cache.longest([7, 8]) == (None, 0)


def test_an_entry_a_newer_one_extends_is_dropped() -> None:
    cache = PromptCache(limit_bytes=1000)
    cache.add([1, 2], state(10))
    cache.add([1, 2, 3], state(10))
    assert len(cache) == 1 and cache.longest([1, 2])[0].tokens == [1, 2, 3]  # type: ignore[union-attr]


def test_a_prompt_already_held_is_not_saved_twice() -> None:
    cache = PromptCache(limit_bytes=1000)
    assert cache.add([1, 2, 3], state(10))
    assert not cache.add([1, 2], state(10))
    assert len(cache) == 1 and cache.saved == 1


def test_oldest_go_first_at_the_byte_limit() -> None:
    cache = PromptCache(limit_bytes=25)
    for first in (1, 2, 3):
        cache.add([first, 0], state(10))
    assert len(cache) == 2 and cache.bytes == 20
    assert cache.longest([1, 0])[0] is None and cache.longest([3, 0])[1] == 2


def test_oldest_go_first_at_the_token_limit() -> None:
    cache = PromptCache(limit_bytes=10_000, limit_tokens=5)
    cache.add([1, 1, 1], state(1))
    cache.add([2, 2, 2], state(1))
    assert len(cache) == 1 and cache.tokens == 3 and cache.longest([2])[1] == 1


def test_an_entry_over_the_limit_is_refused_without_evicting() -> None:
    cache = PromptCache(limit_bytes=25)
    cache.add([1], state(10))
    assert not cache.fits(1, 30)
    assert not cache.add([2], state(30))
    assert len(cache) == 1


def test_taken_entries_leave_the_cache() -> None:
    cache = PromptCache(limit_bytes=100)
    cache.add([1, 2], state(10))
    entry, _ = cache.longest([1, 2, 3])
    assert entry is not None
    cache.take(entry)
    assert len(cache) == 0 and cache.restored == 1


def test_zero_limit_disables() -> None:
    assert not PromptCache(limit_bytes=0).add([1], state(1))
    assert not PromptCache(limit_bytes=100, limit_tokens=0).add([1], state(1))


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6, 7]) == 2
    assert common_prefix((5, 6), [5, 7]) == 1  # any sequences, compared by value
    assert common_prefix([9], [8]) == 0
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 3, size=int(rng.integers(0, 40))).tolist()
        b = rng.integers(0, 3, size=int(rng.integers(0, 40))).tolist()
        expected = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        assert common_prefix(a, b) == expected
