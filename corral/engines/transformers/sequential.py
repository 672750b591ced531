"""Generation one request at a time through ``model.generate``: the fallback for a
model transformers' continuous batching cannot run (``chat.ChatEngine`` logs that it
fell back), or when ``continuous_batching`` is off. Tokens reach the request as the
batching manager's results do (cumulative ``generated_tokens``), so ``chat._Request``
reads both the same way; a cancelled request stops at its next token.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

log = logging.getLogger("corral.transformers")


class Job(Protocol):
    id: str

    def on_result(self, result: Any) -> None: ...


@dataclass
class Result:
    """What ``_Request.on_result`` reads from a result of either backend."""

    generated_tokens: list[int]
    error: str | None = None
    finished: bool = False

    def is_finished(self) -> bool:
        return self.finished


class Sequential:
    """One request at a time through ``model.generate``: for a model continuous
    batching cannot run (logged at load), or when ``continuous_batching`` is off."""

    def __init__(self, model: Any, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.cancelled: set[str] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="generate")

    def add(
        self,
        job: Job,
        prompt: list[int],
        max_new: int,
        eos: list[int] | int,
        sampling: dict[str, Any],
    ) -> None:
        loop = asyncio.get_running_loop()
        self._pool.submit(self._run, job, prompt, max_new, eos, sampling, loop)

    def cancel_request(self, request_id: str) -> None:
        self.cancelled.add(request_id)

    def _run(
        self,
        job: Job,
        prompt: list[int],
        max_new: int,
        eos: list[int] | int,
        sampling: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tokens: list[int] = []
        cancelled = self.cancelled

        class Stream(BaseStreamer):
            first = True

            def put(self, value: torch.Tensor) -> None:
                if self.first:  # the prompt
                    self.first = False
                    return
                tokens.extend(int(t) for t in value.reshape(-1))
                loop.call_soon_threadsafe(job.on_result, Result(list(tokens)))

            def end(self) -> None:
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> bool:
                return job.id in cancelled

        greedy = sampling == {"top_k": 1}
        options: dict[str, Any] = {"do_sample": not greedy}
        if not greedy:
            options.update(sampling)
        error = None
        try:
            with torch.inference_mode():
                self.model.generate(
                    torch.tensor([prompt], device=self.model.device),
                    max_new_tokens=max_new,
                    eos_token_id=None if eos == -1 else eos,
                    pad_token_id=self.pad_token_id,
                    streamer=Stream(),
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                    **options,
                )
        except Exception as exc:  # the request's failure, not the worker's
            log.exception("generate() failed")
            error = str(exc)
        finally:
            cancelled.discard(job.id)
        loop.call_soon_threadsafe(job.on_result, Result(list(tokens), error, finished=True))

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
