"""Build small random-weight Llama GGUF models offline, in well under a second.

They are what the embedded demo model, the test suite and the benchmarks run on
when no real model can be downloaded. The files are real GGUF that llama.cpp
loads like any other: a byte-level BPE ("gpt2") vocabulary learned here from a
small built-in corpus, a ChatML chat template, and Llama tensors filled with
random numbers. The output is gibberish by construction; the metadata says so.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
RANDOM_WEIGHTS_NOTE = "Random weights: output is gibberish by construction."
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Fill-in-the-middle markers, as Qwen's coder models name them (llama.cpp finds them by name).
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")

_CORPUS = """
Corral keeps many models in one place and serves them through the interfaces that
people already use. A model is loaded on first use, kept while it is used, and
evicted when room is needed for another one. The server answers chat and completion
requests, computes embeddings, and streams tokens as soon as they are produced.
Small models are fast, large models are slow, and every model needs memory for its
weights and for the context of each request. When the machine is busy, requests wait
in a queue; when a client goes away, its work stops at once. The quick brown fox jumps
over the lazy dog while the server keeps working. Questions and answers, stories and
summaries, code and data: the same model can write all of them, one token at a time.
Simple is better than complex, and explicit is better than implicit. Errors should
never pass silently. Now is better than never, although never is often better than
right now. If the implementation is hard to explain, it is a bad idea; if it is easy
to explain, it may be a good idea. Readability counts, and so does the time it takes.
"""


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape and content of a synthetic model. The defaults make a ~0.3M-parameter toy."""

    name: str = "synthetic"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 4
    n_ff: int = 128
    context_length: int = 2048
    n_merges: int = 300
    n_vocab: int = 0  # 0 = just bytes + merges + specials; larger pads with filler tokens
    seed: int = 0
    dtype: str = "f16"  # "f16" or "f32" for the matrices; norms are always f32
    embedding: bool = False  # mean-pooled sentence embeddings instead of a chat model
    # A Qwen3-style reranker instead: rank pooling over the last token and a two-label
    # ("yes", "no") classifier head, the score being the softmax of "yes".
    reranker: bool = False
    fim: bool = False  # FIM_TOKENS in the vocabulary: completions may take a suffix
    chat_template: str | None = CHATML_TEMPLATE
    readable: bool = True  # make printable ASCII tokens far likelier than raw bytes
    can_end: bool = True  # False: special tokens get logit 0, so greedy never ends early


def write_model(path: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write a synthetic Llama GGUF to ``path`` (atomically) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, token_types, merges = build_vocab(spec.n_merges, spec.n_vocab, spec.fim)
    rng = np.random.default_rng(spec.seed)
    # Its own partial file: several processes may build the same model at once.
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{time.monotonic_ns()}.partial")
    writer = gguf.GGUFWriter(str(tmp), "qwen3" if spec.reranker else "llama")
    _add_metadata(writer, spec, tokens, token_types, merges)
    for name, array in _tensors(spec, tokens, rng):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def parameter_count(spec: SyntheticSpec) -> int:
    n_vocab = len(build_vocab(spec.n_merges, spec.n_vocab, spec.fim)[0])
    head_dim = spec.n_embd // spec.n_head
    kv = spec.n_head_kv * head_dim
    per_layer = (
        2 * spec.n_embd
        + 2 * spec.n_embd * spec.n_embd
        + 2 * spec.n_embd * kv
        + 3 * spec.n_embd * spec.n_ff
    )
    return 2 * n_vocab * spec.n_embd + spec.n_embd + spec.n_layer * per_layer


# --- vocabulary -------------------------------------------------------------------


def byte_symbols() -> list[str]:
    """GPT-2's reversible mapping of the 256 bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes, strict=True))
    return [chr(table[b]) for b in range(256)]


def build_vocab(
    n_merges: int, n_vocab: int = 0, fim: bool = False
) -> tuple[list[str], list[int], list[str]]:
    """Bytes, learned BPE merges, optional filler, then the special tokens."""
    special = SPECIAL_TOKENS + (FIM_TOKENS if fim else ())
    symbols = byte_symbols()
    merges = _learn_merges(_CORPUS, symbols, max(1, n_merges))
    tokens = symbols + ["".join(m.split(" ")) for m in merges]
    tokens = list(dict.fromkeys(tokens))  # a merge can reproduce an existing token
    filler = n_vocab - len(tokens) - len(special)
    tokens += [f"{symbols[ord(' ')]}tok{i}" for i in range(max(0, filler))]
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(special)
    return tokens + list(special), [int(t) for t in types], merges


def _learn_merges(text: str, symbols: list[str], n_merges: int) -> list[str]:
    words = Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", text))
    seqs = {w: [symbols[b] for b in w.encode()] for w in words}
    merges: list[str] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, seq in seqs.items():
            for a, b in itertools.pairwise(seq):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        for w, seq in seqs.items():
            seqs[w] = _merge(seq, a, b)
    return merges


def _merge(seq: list[str], a: str, b: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


# --- GGUF content -----------------------------------------------------------------


def _add_metadata(
    w: gguf.GGUFWriter,
    spec: SyntheticSpec,
    tokens: list[str],
    token_types: list[int],
    merges: list[str],
) -> None:
    w.add_name(spec.name)
    w.add_description(RANDOM_WEIGHTS_NOTE)
    w.add_string("corral.synthetic", RANDOM_WEIGHTS_NOTE)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else 0)
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    if spec.embedding:
        w.add_pooling_type(gguf.PoolingType.MEAN)
    if spec.reranker:
        w.add_pooling_type(gguf.PoolingType.RANK)
        w.add_array(gguf.Keys.Classifier.OUTPUT_LABELS.format(arch=w.arch), ["yes", "no"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    ids = {t: tokens.index(t) for t in SPECIAL_TOKENS}
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_eos_token_id(ids["<|endoftext|>"])
    w.add_eot_token_id(ids["<|im_end|>"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if spec.chat_template and not (spec.embedding or spec.reranker):
        w.add_chat_template(spec.chat_template)


def _tensors(
    spec: SyntheticSpec, tokens: list[str], rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    dtype = np.float16 if spec.dtype == "f16" else np.float32
    n_vocab = len(tokens)
    head_dim = spec.n_embd // spec.n_head
    kv = spec.n_head_kv * head_dim

    def matrix(rows: int, cols: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(dtype)

    def norm() -> np.ndarray:
        return np.ones(spec.n_embd, dtype=np.float32)

    output = matrix(n_vocab, spec.n_embd, 0.5)
    if spec.readable:
        output[_unreadable_ids(tokens)] *= 0.05
    if not spec.can_end:
        output[[tokens.index(t) for t in SPECIAL_TOKENS]] = 0
    out: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", matrix(n_vocab, spec.n_embd, 1.0)),
        ("output_norm.weight", norm()),
        ("output.weight", output),
    ]
    for i in range(spec.n_layer):
        out += [
            (f"blk.{i}.attn_norm.weight", norm()),
            (f"blk.{i}.attn_q.weight", matrix(spec.n_embd, spec.n_embd)),
            (f"blk.{i}.attn_k.weight", matrix(kv, spec.n_embd)),
            (f"blk.{i}.attn_v.weight", matrix(kv, spec.n_embd)),
            (f"blk.{i}.attn_output.weight", matrix(spec.n_embd, spec.n_embd)),
            (f"blk.{i}.ffn_norm.weight", norm()),
            (f"blk.{i}.ffn_gate.weight", matrix(spec.n_ff, spec.n_embd)),
            (f"blk.{i}.ffn_up.weight", matrix(spec.n_ff, spec.n_embd)),
            (f"blk.{i}.ffn_down.weight", matrix(spec.n_embd, spec.n_ff)),
        ]
        if spec.reranker:  # Qwen3 normalises queries and keys per head
            head = np.ones(head_dim, dtype=np.float32)
            out += [(f"blk.{i}.attn_q_norm.weight", head), (f"blk.{i}.attn_k_norm.weight", head)]
    if spec.reranker:
        out.append(("cls.output.weight", matrix(2, spec.n_embd, 1.0)))
    return out


def _unreadable_ids(tokens: list[str]) -> list[int]:
    """Tokens whose bytes are not printable ASCII (raw bytes, control tokens)."""
    decode = {s: b for b, s in enumerate(byte_symbols())}
    unreadable = []
    for i, tok in enumerate(tokens):
        raw = [decode.get(ch) for ch in tok]
        if any(b is None or not (32 <= b < 127 or b == 10) for b in raw):
            unreadable.append(i)
    return unreadable
