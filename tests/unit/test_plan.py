"""The fit planner on shapes it can check: Qwen3-Next-80B-A3B's config (the worked
example), a dense Llama, the tests' GGUFs."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.engines.plan import (
    GiB,
    Machine,
    PlanError,
    plan,
    shape_of_path,
    shape_of_record,
)
from corral.registry.store import Registry
from tests.support.hf_models import tiny_llama
from tests.support.models import CHAT, model_file

QWEN3_NEXT = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3-next-80b-a3b"
# Qwen3-Next-80B-A3B's model card: 80B parameters in all, 3B active; the count from
# its safetensors is 79,674,391,296 (the same architecture as Qwen3-Coder-Next).
PUBLISHED_PARAMETERS = 79_674_391_296
DESKTOP = Machine(gpu=24 * GiB, ram=120 * GiB)


def test_qwen3_next_shape_from_its_config() -> None:
    shape = shape_of_path(QWEN3_NEXT)
    assert abs(shape.parameters / PUBLISHED_PARAMETERS - 1) < 1e-4
    assert 3.8e9 < shape.active_parameters < 3.95e9  # "A3B": 10 of 512 experts, plus shared
    assert shape.attention_layers == 12  # one layer in four has full attention
    # 12 layers x K and V x 2 heads x 256 x 2 bytes: the hybrid layers add no KV cache
    assert shape.kv_bytes_per_token() == 12 * 2 * 2 * 256 * 2 == 24 * 1024
    # 36 Gated DeltaNet layers: a 32x128x128 float32 state and a conv state each
    assert shape.state_bytes == 36 * (32 * 128 * 128 * 4 + (2 * 16 * 128 + 32 * 128) * 3 * 2)


def test_qwen3_next_4bit_on_24gb_and_120gb_keeps_the_experts_in_ram() -> None:
    result = plan(shape_of_path(QWEN3_NEXT), DESKTOP, context=32768, slots=1)
    by = {(p.engine, p.quant): p for p in result.placements}
    llama = by["llama.cpp", "Q4_K_M"]
    assert llama.fits and llama.how == "experts in RAM, the rest on the GPU"
    assert '--override-tensor "_exps=CPU"' in llama.flags
    assert llama.gpu_bytes < 4 * GiB  # attention, shared experts, 768 MiB of KV at 32K
    assert 40 * GiB < llama.ram_bytes < 50 * GiB  # the 44 GiB of experts
    assert llama.max_context == 262144  # the whole trained context fits beside them
    assert 10 <= llama.tokens_per_s <= 60  # RAM-bound: 10 experts of 512 a token
    vllm = by["vLLM", "AWQ-4bit"]
    assert vllm.fits and "--cpu-offload-gb" in vllm.flags
    assert vllm.tokens_per_s < 3  # offloaded weights cross PCIe every step
    assert result.summary.startswith("Best: llama.cpp at Q4_K_M")
    assert not by["llama.cpp", "F16"].fits  # 148 GiB of weights: over the RAM


def test_a_dense_model_too_big_for_the_gpu_splits_its_layers() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 28672,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
    }
    from corral.engines.plan import shape_from_config

    shape = shape_from_config(config, "llama-70b")
    assert abs(shape.parameters / 70.55e9 - 1) < 0.01  # Llama-3-70B
    result = plan(shape, DESKTOP, context=8192, quants=("Q4_K_M",))
    (split,) = result.placements
    assert split.how.endswith("of 80 layers on the GPU") and split.fits
    layers_on_gpu = int(split.how.split()[0])
    assert 30 <= layers_on_gpu <= 50 and f"-ngl {layers_on_gpu}" in split.flags


def test_without_a_gpu_llamacpp_runs_on_the_cpu_and_vllm_cannot() -> None:
    result = plan(shape_of_path(model_file(CHAT)), Machine(ram=8 * GiB), context=4096, slots=4)
    cpu = result.placements[0]
    assert cpu.engine == "llama.cpp" and cpu.how == "CPU only" and cpu.fits
    assert all(not p.fits and p.how == "needs a GPU" for p in result.placements[1:])


def test_a_gguf_plans_at_its_own_quantization_from_its_tensor_table() -> None:
    path = model_file(CHAT)
    shape = shape_of_path(path)
    assert shape.file_quant == "F16" and 0 < shape.file_bytes < path.stat().st_size
    assert shape.kv_bytes_per_token() == 4 * 4 * (48 + 48) * 2  # layers x kv heads x dims
    result = plan(shape, Machine(ram=8 * GiB), context=1024)
    assert result.weights[0] == {"quant": "F16", "bytes": shape.file_bytes, "expert_bytes": 0}


def test_registry_models_plan_from_their_files(tmp_path: Path) -> None:
    store = Registry(tmp_path)
    hf = store.import_path(tiny_llama(), "tiny")
    shape = shape_of_record(hf)
    assert shape.parameters == hf.info.parameters  # counted from the safetensors
    assert shape.source == "config.json" and shape.attention_layers == 2
    gguf = shape_of_record(store.import_path(model_file(CHAT), "chat"))
    assert gguf.source == "GGUF header"


def test_a_config_the_planner_cannot_read_says_so(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "mystery"}')
    with pytest.raises(PlanError, match=r"not a model config\.json"):
        shape_of_path(tmp_path)
    with pytest.raises(PlanError, match="no such file"):
        shape_of_path(tmp_path / "missing")
