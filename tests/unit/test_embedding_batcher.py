"""The transformers engine's gathering of embedding inputs into forward passes."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from corral.engines.transformers.batcher import Batcher, measure_call_cost, plan_chunks


def test_without_a_call_cost_a_pass_is_cut_only_at_the_limit() -> None:
    assert plan_chunks([3, 5, 9, 40], float("inf"), 32) == [(0, 4)]
    assert plan_chunks([1] * 5, float("inf"), 2) == [(0, 2), (2, 4), (4, 5)]
    assert plan_chunks([], float("inf"), 8) == []


def test_a_long_outlier_gets_its_own_call_when_calls_are_cheap() -> None:
    # Padding ten short inputs to 100 positions costs 920; one more call costs 20.
    assert plan_chunks([8] * 10 + [100], 20.0, 32) == [(0, 10), (10, 11)]


def test_dear_calls_keep_the_pass_whole() -> None:
    assert plan_chunks([8] * 10 + [100], 5000.0, 32) == [(0, 11)]


def test_chunks_never_exceed_the_limit_and_cover_every_input() -> None:
    lengths = sorted([5, 7, 7, 9, 12, 12, 13, 20, 31, 31, 32, 64])
    chunks = plan_chunks(lengths, 15.0, 4)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(chunks))
    assert all(0 < end - start <= 4 for start, end in chunks)


def test_results_come_back_in_each_request_s_order() -> None:
    calls: list[list[int]] = []

    def run(batch: list[list[int]]) -> list[int]:
        calls.append([len(ids) for ids in batch])
        return [sum(ids) for ids in batch]

    async def main() -> list[list[int]]:
        batcher = Batcher(run, limit=8, call_cost=2.0)
        first = batcher.submit([[1] * 30, [2], [3, 3]])
        second = batcher.submit([[4] * 2, [5] * 40])
        return list(await asyncio.gather(first, second))

    assert asyncio.run(main()) == [[30, 2, 6], [8, 200]]
    # Sorted by length and cut: the 40-long input did not pad the short ones.
    assert all(lengths == sorted(lengths) for lengths in calls)
    assert max(len(c) for c in calls) <= 8 and len(calls) > 1


class _Clock:
    """A clock that ``run`` moves: timings without the machine's load in them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_call_cost_is_measured_in_positions() -> None:
    clock = _Clock()

    def run(batch: list[list[int]]) -> None:  # 2 ms a call plus 0.01 ms a position
        clock.now += 0.002 + 0.00001 * sum(len(ids) for ids in batch)

    assert measure_call_cost(run, [1] * 16, clock) == pytest.approx(200.0)


def test_a_device_where_width_is_free_never_splits() -> None:
    clock = _Clock()

    def run(batch: list[list[int]]) -> None:  # the same time however many inputs
        clock.now += 0.002

    assert measure_call_cost(run, [1] * 16, clock) == float("inf")
