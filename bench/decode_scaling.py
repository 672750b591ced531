"""Why batching helps little on a small CPU: llama.cpp's decode step, taken apart.

Times one ``llama_decode`` of N tokens of one sequence, asking for logits of the
last token only (what prompt processing does) or of every token (what a batched
decode step of N sequences does). The difference is the output layer, which runs
once per output row; the rest is the model body.

Then the step continuous batching actually runs: 8 sequences, one token each, in a
context shaped like Corral's (8 KV streams of 2048 cells), after each sequence
already holds H tokens, against one sequence decoding 8 tokens after H. The gap
is attention over the sequences' own histories, which grows with H.
Pure llama.cpp, no Corral.

    python bench/decode_scaling.py [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp as lc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serving import build_models


@contextmanager
def decoder(path: Path, threads: int, n_ctx: int, sequences: int) -> Iterator[tuple[Any, Any, Any]]:
    """(context, batch, memory) on the model at ``path``: one KV stream per sequence, as
    Corral's engine makes them; freed on exit."""
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, 512, 512, sequences
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
    params.kv_unified = False
    ctx = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(512, 0, 1)
    try:
        yield ctx, batch, lc.llama_get_memory(ctx)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)


def _fill(batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    """(token, position, sequence, wants logits) for each token of the next decode."""
    for i, (token, pos, seq, output) in enumerate(entries):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = output
    batch.n_tokens = len(entries)


def median_decode_ms(ctx: Any, batch: Any, mem: Any, n: int, all_outputs: bool) -> float:
    times = []
    for _ in range(9):
        lc.llama_memory_clear(mem, True)
        _fill(batch, [(100 + i, i, 0, all_outputs or i == n - 1) for i in range(n)])
        start = time.perf_counter()
        lc.llama_decode(ctx, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def median_step_ms(ctx: Any, batch: Any, mem: Any, history: int, sequences: int) -> float:
    """One step of 8 tokens (all with logits) after ``history`` tokens per sequence:
    ``sequences`` = 8 is 8 sequences x 1 token, 1 is one sequence x 8 tokens."""
    times = []
    for _ in range(7):
        lc.llama_memory_clear(mem, True)
        for seq in range(sequences):
            if history:
                _fill(batch, [(100 + i, i, seq, False) for i in range(history)])
                lc.llama_decode(ctx, batch)
        if sequences == 1:
            _fill(batch, [(200 + i, history + i, 0, True) for i in range(8)])
        else:
            _fill(batch, [(200, history, seq, True) for seq in range(sequences)])
        start = time.perf_counter()
        lc.llama_decode(ctx, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def history_table(models: dict[str, Path], threads: int) -> None:
    print()
    print("| quant | history H | ms, 1 seq x 8 tokens | ms, 8 seqs x 1 token |")
    print("| --- | ---: | ---: | ---: |")
    for quant, path in models.items():
        with decoder(path, threads, n_ctx=8 * 2048, sequences=8) as (ctx, batch, mem):
            for history in (0, 64, 192):
                one = median_step_ms(ctx, batch, mem, history, 1)
                eight = median_step_ms(ctx, batch, mem, history, 8)
                print(f"| {quant} | {history} | {one:.1f} | {eight:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    lc.llama_backend_init()
    print("| quant | tokens | ms, 1 output | ms, all outputs | ms/token body | ms per output row |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    models = build_models()
    for quant, path in models.items():
        with decoder(path, args.threads, n_ctx=4096, sequences=1) as (ctx, batch, mem):
            for n in (1, 8, 64):
                one = median_decode_ms(ctx, batch, mem, n, all_outputs=False)
                every = median_decode_ms(ctx, batch, mem, n, all_outputs=True)
                per_row = (every - one) / (n - 1) if n > 1 else float("nan")
                print(
                    f"| {quant} | {n} | {one:.1f} | {every:.1f} | {one / n:.1f} | {per_row:.1f} |"
                )
    history_table(models, args.threads)


if __name__ == "__main__":
    main()
