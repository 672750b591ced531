"""Why batching helps little on a small CPU: llama.cpp's decode step, taken apart.

Times one ``llama_decode`` of N tokens of one sequence, asking for logits of the
last token only (what prompt processing does) or of every token (what a batched
decode step of N sequences does). The difference is the output layer, which runs
once per output row; the rest is the model body. Pure llama.cpp, no Corral.

    python bench/decode_scaling.py [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import llama_cpp as lc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serving import build_models


def median_decode_ms(ctx: object, batch: object, mem: object, n: int, all_outputs: bool) -> float:
    times = []
    for _ in range(9):
        lc.llama_memory_clear(mem, True)
        for i in range(n):
            batch.token[i] = 100 + i  # type: ignore[attr-defined]
            batch.pos[i] = i  # type: ignore[attr-defined]
            batch.n_seq_id[i] = 1  # type: ignore[attr-defined]
            batch.seq_id[i][0] = 0  # type: ignore[attr-defined]
            batch.logits[i] = 1 if (all_outputs or i == n - 1) else 0  # type: ignore[attr-defined]
        batch.n_tokens = n  # type: ignore[attr-defined]
        start = time.perf_counter()
        lc.llama_decode(ctx, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    lc.llama_backend_init()
    print("| quant | tokens | ms, 1 output | ms, all outputs | ms/token body | ms per output row |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for quant, path in build_models().items():
        model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 4096, 512, 512, 1
        params.n_threads = params.n_threads_batch = args.threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        ctx = lc.llama_init_from_model(model, params)
        mem = lc.llama_get_memory(ctx)
        batch = lc.llama_batch_init(512, 0, 1)
        for n in (1, 8, 64):
            one = median_decode_ms(ctx, batch, mem, n, all_outputs=False)
            every = median_decode_ms(ctx, batch, mem, n, all_outputs=True)
            per_row = (every - one) / (n - 1) if n > 1 else float("nan")
            print(f"| {quant} | {n} | {one:.1f} | {every:.1f} | {one / n:.1f} | {per_row:.1f} |")
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)


if __name__ == "__main__":
    main()
