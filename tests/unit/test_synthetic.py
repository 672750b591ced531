from pathlib import Path

from corral.registry.gguf_info import read_gguf_info
from corral.registry.synthetic import SyntheticSpec, build_vocab, parameter_count, write_model


def test_vocab_has_bytes_merges_and_specials() -> None:
    tokens, types, merges = build_vocab(50)
    assert len(tokens) == len(types)
    assert len(set(tokens)) == len(tokens)
    assert tokens[-3:] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert merges and all(len(m.split(" ")) == 2 for m in merges)


def test_vocab_can_be_padded() -> None:
    tokens, _, _ = build_vocab(50, n_vocab=2000)
    assert len(tokens) == 2000


def test_written_model_header_matches_spec(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_embd=32, n_layer=1, n_ff=64, context_length=256)
    info = read_gguf_info(write_model(tmp_path / "m.gguf", spec))
    assert info.architecture == "llama" and info.context_length == 256
    assert info.parameters == parameter_count(spec)
    assert info.has_chat_template and not info.embedding
    assert info.quantization == "F16"
