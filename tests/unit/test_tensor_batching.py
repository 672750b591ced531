"""The onnx engine's dynamic batching: which requests share a call, and the split."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from corral.engines.onnx.batching import TensorBatcher, Tensors


def _recording() -> tuple[list[int], object]:
    calls: list[int] = []

    def run(inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        x = inputs["x"]
        calls.append(x.shape[0])
        return {"y": x * 2, "rows": np.arange(x.shape[0])}

    return calls, run


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    calls, run = _recording()

    async def main() -> list[Tensors]:
        batcher = TensorBatcher(run, stackable=True, max_rows=8)  # type: ignore[arg-type]
        jobs = [batcher.submit({"x": np.full((2, 3), i)}, ["y"]) for i in range(10)]
        return list(await asyncio.gather(*jobs))

    results = asyncio.run(main())
    for i, result in enumerate(results):
        assert result["y"].tolist() == [[2 * i] * 3] * 2
    assert sum(calls) == 20 and max(calls) <= 8 and len(calls) < 10


def test_requests_that_cannot_stack_run_apart() -> None:
    calls, run = _recording()

    async def main() -> list[Tensors]:
        batcher = TensorBatcher(run, stackable=True, max_rows=64)  # type: ignore[arg-type]
        return list(
            await asyncio.gather(
                batcher.submit({"x": np.zeros((1, 3))}, ["y"]),
                batcher.submit({"x": np.zeros((1, 5))}, ["y"]),  # other trailing dims
                batcher.submit({"x": np.zeros((1, 3), np.float32)}, ["y"]),  # other dtype
                batcher.submit({"x": np.zeros((1, 3))}, ["rows"]),  # other outputs
                batcher.submit({"x": np.ones((1, 3))}, ["y"]),  # joins the first
            )
        )

    results = asyncio.run(main())
    assert len(calls) == 4
    assert results[4]["y"].tolist() == [[2.0, 2.0, 2.0]]


def test_an_unstackable_model_gets_one_call_per_request() -> None:
    calls, run = _recording()

    async def main() -> None:
        batcher = TensorBatcher(run, stackable=False, max_rows=64)  # type: ignore[arg-type]
        await asyncio.gather(*(batcher.submit({"x": np.zeros((1, 3))}, ["y"]) for _ in range(5)))

    asyncio.run(main())
    assert calls == [1] * 5


def test_a_failing_shared_call_fails_only_the_request_that_broke_it() -> None:
    def run(inputs: Tensors, outputs: Sequence[str]) -> Tensors:
        if inputs["x"].min() < 0:
            raise ValueError("negative")
        return {"y": inputs["x"]}

    async def main() -> list[object]:
        batcher = TensorBatcher(run, stackable=True, max_rows=64)
        first = await asyncio.gather(
            batcher.submit({"x": -np.ones((1, 2))}, ["y"]),
            batcher.submit({"x": np.ones((1, 2))}, ["y"]),
            return_exceptions=True,
        )
        after = await batcher.submit({"x": np.ones((1, 2))}, ["y"])
        return [*first, after]

    first, second, after = asyncio.run(main())
    assert isinstance(first, ValueError)
    assert isinstance(second, dict) and second["y"].tolist() == [[1.0, 1.0]]
    assert isinstance(after, dict) and after["y"].tolist() == [[1.0, 1.0]]
