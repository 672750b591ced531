"""Tiny random-weight Hugging Face models, made offline and cached like the GGUFs.

A Llama with a byte-level BPE tokenizer trained here with ``tokenizers`` and a ChatML
template: small enough to load in a second, real enough for transformers' own
generation and continuous batching. ``bench/transformers.py`` builds a larger one
with the same tokenizer through ``random_llama``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.support.models import CACHE

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRAINING_TEXT = [
    "the quick brown fox jumps over the lazy dog while the cat sleeps " * 20,
    "hello world how are you today i am fine thank you and you " * 20,
    "one two three four five six seven eight nine ten " * 20,
]


def tiny_llama() -> Path:
    """2 layers x 64: 0.4M parameters."""
    return random_llama(
        CACHE / "hf-tiny-llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )


def vllm_llama() -> Path:
    """2 layers x 128 with 64-wide heads: vLLM's CPU attention has no kernel for
    narrower heads (head_dim=16 fails at the first request)."""
    return random_llama(
        CACHE / "hf-vllm-llama",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )


def random_llama(directory: Path, **shape: Any) -> Path:
    """A random-weight Llama of ``shape`` (LlamaConfig's fields) with the BPE tokenizer
    and ChatML template, saved to ``directory`` once (an existing one is reused)."""
    if (directory / "config.json").exists():
        return directory
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    tmp = directory.parent / f"{directory.name}.{os.getpid()}.partial"  # test processes race
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(tmp)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    LlamaForCausalLM(config).save_pretrained(tmp)
    try:
        tmp.rename(directory)
    except OSError:  # another test process finished first: theirs is the same model
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(TRAINING_TEXT, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer
