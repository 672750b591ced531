"""Tiny random-weight GGUF models for tests, built offline and cached outside the repo.

The cache key covers the spec and the builder's source, so a change to either
rebuilds the file. ``CORRAL_TEST_CACHE`` moves the cache (default ~/.cache/corral-tests).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from corral.registry import synthetic
from corral.registry.synthetic import SyntheticSpec, write_model

CACHE = Path(os.environ.get("CORRAL_TEST_CACHE", Path.home() / ".cache" / "corral-tests"))

# ~2M parameters: fast (~1.6 ms/token alone) yet slow enough that 8 concurrent
# 400-token streams overlap by a wide margin.
CHAT = SyntheticSpec(name="test-chat", n_embd=192, n_layer=4, n_ff=512, context_length=4096, seed=1)
# Grouped-query attention and a raw byte-heavy vocabulary (broken UTF-8 on output).
RAW = SyntheticSpec(name="test-raw", n_head=4, n_head_kv=2, readable=False, seed=3)
EMBED = SyntheticSpec(name="test-embed", embedding=True, context_length=512, seed=2)
# A Qwen3-style reranker (rank pooling, a yes/no head): scores in (0, 1).
RERANK = SyntheticSpec(name="test-rerank", reranker=True, context_length=512, seed=4)


def model_file(spec: SyntheticSpec) -> Path:
    key = hashlib.sha256(Path(synthetic.__file__).read_bytes() + repr(spec).encode()).hexdigest()
    path = CACHE / f"{spec.name}-{key[:16]}.gguf"
    if not path.exists():
        write_model(path, spec)
    return path
