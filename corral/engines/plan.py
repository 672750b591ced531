"""The fit planner: how a model fits on a machine, and why, without loading it.

From a model's shape (a Hugging Face ``config.json``, or a GGUF header and its tensor
table) and a machine (GPU memory, RAM, their bandwidths), it works out:

- the weights' bytes at each quantization, split into MoE expert tensors and the rest;
- the KV cache per token (only layers with full attention have one: Qwen3-Next's
  Gated DeltaNet layers keep a fixed-size state per sequence instead);
- where llama.cpp and vLLM would put what: all on the GPU; or, for a MoE model,
  the expert tensors in RAM and the rest on the GPU (``--override-tensor
  "_exps=CPU"``, how llama.cpp users run big MoE models on one card); or as many
  layers as fit (``--n-gpu-layers``); for vLLM, ``--cpu-offload-gb``;
- the longest context that fits, and the tokens/s to expect: decoding reads every
  active weight once a token, so memory bandwidth bounds it (experts read from RAM
  at RAM speed; vLLM's offloaded weights cross PCIe every step).

Figures are estimates with their assumptions written next to them; the bandwidths
are defaults the caller may replace with the machine's own.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from corral.registry.gguf_header import read_header
from corral.registry.gguf_info import read_gguf_info
from corral.registry.records import ModelRecord

GiB = 1 << 30
MiB = 1 << 20
# Bits a weight costs, block scales included (llama.cpp's quantize table; GPTQ/AWQ
# with groups of 128: 4 bits, a 16-bit scale and a 4-bit zero a group).
BITS_PER_WEIGHT: dict[str, float] = {
    "Q2_K": 2.96,
    "Q3_K_M": 3.91,
    "IQ4_XS": 4.25,
    "Q4_0": 4.55,
    "Q4_K_M": 4.89,
    "Q5_K_M": 5.70,
    "Q6_K": 6.56,
    "Q8_0": 8.50,
    "F16": 16.0,
    "BF16": 16.0,
    "GPTQ-4bit": 4.16,
    "AWQ-4bit": 4.16,
    "FP8": 8.0,
}
VLLM_QUANTS = ("GPTQ-4bit", "AWQ-4bit", "FP8", "BF16")
LLAMACPP_QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0", "F16")
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# What runs beside the weights (measured here for llama.cpp on CPU: compute buffers
# and the process; vLLM: activations, CUDA graphs and the CUDA context).
LLAMACPP_GPU_OVERHEAD = 600 * MiB
# Corral's llama.cpp worker before any model (Python, uvicorn, numpy, libllama),
# measured here: 61-63 MiB (llama-server's C++ process is some 20 MiB less).
LLAMACPP_PROCESS = 62 * MiB
VLLM_GPU_OVERHEAD = int(1.5 * GiB)
VLLM_PROCESS = int(2.5 * GiB)
PCIE_BYTES_PER_S = 25e9  # PCIe 4.0 x16 in practice
# Decoding reaches about half the bandwidth bound in practice (llama.cpp on CPU and
# GPU alike, as measured in bench/RESULTS.md): the expected rate, and its class.
EFFICIENCY = 0.5


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, from its config or its GGUF header."""

    name: str
    source: str  # "config.json", "GGUF header"
    parameters: int
    layers: int
    hidden: int
    vocab: int
    kv_heads: int
    key_dim: int
    value_dim: int
    attention_layers: int  # layers with a KV cache (all, unless hybrid)
    state_bytes: int = 0  # recurrent state of one sequence (linear-attention layers)
    experts: int = 0
    experts_used: int = 0  # per token, shared experts not counted
    expert_parameters: int = 0  # all routed experts' weights
    trained_context: int = 0
    ffn: int = 0  # feed-forward width (a MoE model's: its experts' in use together)
    file_bytes: int = 0  # the GGUF's own size, when planning a file
    file_expert_bytes: int = 0  # its expert tensors' bytes
    file_layer_bytes: int = 0  # its layers' matrices (what a CPU backend may repack)
    file_quant: str = ""

    @property
    def active_parameters(self) -> int:
        if not self.experts:
            return self.parameters
        idle = self.expert_parameters * (self.experts - self.experts_used) // self.experts
        return self.parameters - idle

    def kv_bytes_per_token(self, cache: str = "f16") -> int:
        values = self.attention_layers * self.kv_heads * (self.key_dim + self.value_dim)
        return math.ceil(values * KV_BYTES[cache])


@dataclass(frozen=True)
class Machine:
    gpu: int = 0  # bytes of GPU memory (one card)
    ram: int = 0  # bytes of RAM for the model
    gpu_bandwidth: float = 900e9  # bytes/s (a 24 GB card of 2022-2024: 0.9-1 TB/s)
    ram_bandwidth: float = 60e9  # bytes/s (dual-channel DDR5)
    # A CPU whose llama.cpp backend keeps a second, repacked copy of the layers'
    # matrices (AMX: "AMX model buffer", measured as large as the layers themselves).
    repacks: bool = False


@dataclass
class Placement:
    engine: str  # "llama.cpp" or "vLLM"
    quant: str
    how: str  # the strategy, in a few words
    flags: str  # what to pass the engine
    gpu_bytes: int
    ram_bytes: int
    fits: bool
    max_context: int
    tokens_per_s: float  # expected: EFFICIENCY of the bandwidth bound
    tokens_per_s_bound: float  # every active byte read once a token at full bandwidth
    speed_class: str
    why: str  # one plain sentence


@dataclass
class Plan:
    model: str
    source: str
    machine: dict[str, Any]
    context: int
    slots: int
    facts: dict[str, Any]
    weights: list[dict[str, Any]]
    placements: list[Placement] = field(default_factory=list)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- shapes ------------------------------------------------------------------------------


def shape_from_config(config: dict[str, Any], name: str = "model") -> ModelShape:
    """A model's shape from its ``config.json`` (its ``text_config`` for multimodal ones)."""
    c = dict(config.get("text_config") or config)
    hidden = int(c["hidden_size"])
    layers = int(c["num_hidden_layers"])
    heads = int(c.get("num_attention_heads") or 1)
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    vocab = int(c.get("vocab_size") or 0)
    kinds = _layer_kinds(c, layers)
    attention_layers = kinds.count("full_attention")
    linear_layers = layers - attention_layers
    gated = bool(c.get("attn_output_gate", c.get("model_type") == "qwen3_next"))
    attention = hidden * heads * head_dim * (2 if gated else 1)  # q (and its gate)
    attention += 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden  # k, v, o
    kh, vh = int(c.get("linear_num_key_heads") or 0), int(c.get("linear_num_value_heads") or 0)
    kd, vd = int(c.get("linear_key_head_dim") or 0), int(c.get("linear_value_head_dim") or 0)
    kernel = int(c.get("linear_conv_kernel_dim") or 4)
    conv_dim = 2 * kh * kd + vh * vd
    linear = hidden * (2 * kh * kd + 2 * vh * vd) + hidden * 2 * vh + vh * vd * hidden
    linear += conv_dim * kernel
    experts = int(c.get("num_experts") or c.get("n_routed_experts") or 0)
    used = int(c.get("num_experts_per_tok") or 0)
    moe_width = 0
    if experts:
        moe = moe_width = int(
            c.get("moe_intermediate_size") or c.get("intermediate_size") or hidden
        )
        shared = int(c.get("shared_expert_intermediate_size") or 0)
        routed = experts * 3 * hidden * moe
        mlp_rest = 3 * hidden * shared + hidden * experts + (hidden if shared else 0)
    else:
        routed, mlp_rest = 0, 3 * hidden * int(c.get("intermediate_size") or 4 * hidden)
    tied = bool(c.get("tie_word_embeddings", False))
    embeddings = vocab * hidden * (1 if tied else 2)
    per_layer_norms = 2 * hidden
    parameters = (
        embeddings
        + attention_layers * attention
        + linear_layers * linear
        + layers * (routed + mlp_rest + per_layer_norms)
    )
    # One sequence's recurrent state: the delta rule's matrix (float32) and the
    # convolution's last kernel-1 inputs (16-bit), in every linear-attention layer.
    state = linear_layers * (vh * kd * vd * 4 + conv_dim * (kernel - 1) * 2)
    return ModelShape(
        name=name,
        source="config.json",
        parameters=parameters,
        layers=layers,
        hidden=hidden,
        vocab=vocab,
        kv_heads=kv_heads,
        key_dim=head_dim,
        value_dim=head_dim,
        attention_layers=attention_layers,
        state_bytes=state,
        experts=experts,
        experts_used=used,
        expert_parameters=routed * layers,
        trained_context=int(c.get("max_position_embeddings") or 0),
        ffn=(moe_width * used if experts else int(c.get("intermediate_size") or 4 * hidden)),
    )


def _layer_kinds(c: dict[str, Any], layers: int) -> list[str]:
    kinds = c.get("layer_types")
    if isinstance(kinds, list) and len(kinds) == layers:
        return ["full_attention" if k == "full_attention" else "linear" for k in kinds]
    interval = int(c.get("full_attention_interval") or 0)
    if interval:  # Qwen3-Next: every interval-th layer has full attention
        return ["full_attention" if (i + 1) % interval == 0 else "linear" for i in range(layers)]
    return ["full_attention"] * layers


def shape_from_gguf(
    metadata: dict[str, Any],
    tensor_bytes: dict[str, int],
    *,
    name: str,
    quant: str,
    parameters: int,
    vocab: int,
) -> ModelShape:
    """A GGUF's shape from its header: llama.cpp's keys, and the tensor table for the
    bytes its expert tensors (``*_exps``) take."""
    arch = str(metadata.get("general.architecture", ""))

    def key(suffix: str, default: Any = 0) -> Any:
        return metadata.get(f"{arch}.{suffix}", default)

    layers = int(key("block_count"))
    hidden = int(key("embedding_length"))
    heads = _first(key("attention.head_count", 1))
    kv = key("attention.head_count_kv", heads)
    per_layer_kv = kv if isinstance(kv, list) else [kv] * layers
    attention_layers = sum(1 for n in per_layer_kv if int(n) > 0) or layers
    kv_heads = max(int(n) for n in per_layer_kv) if per_layer_kv else heads
    head_dim = hidden // max(1, heads)
    interval = int(key("full_attention_interval", 0))
    if interval and attention_layers == layers:
        attention_layers = layers // interval
    experts = int(key("expert_count", 0))
    expert_bytes = sum(b for n, b in tensor_bytes.items() if "_exps" in n)
    layer_bytes = sum(
        b for n, b in tensor_bytes.items() if n.startswith("blk.") and "norm" not in n
    )
    ffn = key("expert_feed_forward_length", 0) or key("feed_forward_length", 0)
    ffn = _first(ffn) if ffn else 4 * hidden
    if experts:
        ffn *= max(1, int(key("expert_used_count", 1)))
    total_bytes = sum(tensor_bytes.values())
    bits = 8 * total_bytes / max(1, parameters)
    return ModelShape(
        name=name,
        source="GGUF header",
        parameters=parameters,
        layers=layers,
        hidden=hidden,
        vocab=vocab,
        kv_heads=kv_heads,
        key_dim=int(key("attention.key_length", head_dim)),
        value_dim=int(key("attention.value_length", head_dim)),
        attention_layers=attention_layers,
        experts=experts,
        experts_used=int(key("expert_used_count", 0)),
        expert_parameters=int(expert_bytes * 8 / bits) if expert_bytes else 0,
        trained_context=int(key("context_length", 0)),
        ffn=ffn,
        file_bytes=total_bytes,
        file_expert_bytes=expert_bytes,
        file_layer_bytes=layer_bytes,
        file_quant=quant,
    )


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list) and value else value or 1)


# --- the plan ------------------------------------------------------------------------------


def weight_bytes(shape: ModelShape, quant: str) -> tuple[int, int]:
    """(all weights, the routed experts' share) at ``quant``; a GGUF at its own quant
    is its tensor table, exactly."""
    if shape.file_bytes and quant == shape.file_quant:
        return shape.file_bytes, shape.file_expert_bytes
    bits = BITS_PER_WEIGHT[quant]
    total = int(shape.parameters * bits / 8)
    if quant in ("GPTQ-4bit", "AWQ-4bit"):  # embeddings and the output head stay 16-bit
        head = 2 * shape.vocab * shape.hidden
        total = int((shape.parameters - head) * bits / 8) + head * 2
    return total, int(shape.expert_parameters * bits / 8)


def plan(
    shape: ModelShape,
    machine: Machine,
    context: int,
    slots: int = 1,
    quants: tuple[str, ...] | None = None,
) -> Plan:
    context = min(context, shape.trained_context) if shape.trained_context else context
    llamacpp_quants = (shape.file_quant,) if shape.file_quant else LLAMACPP_QUANTS
    chosen = quants or (*llamacpp_quants, *VLLM_QUANTS)
    weights = []
    for quant in chosen:
        total, experts = weight_bytes(shape, quant)
        weights.append({"quant": quant, "bytes": total, "expert_bytes": experts})
    result = Plan(
        model=shape.name,
        source=shape.source,
        machine={"gpu": machine.gpu, "ram": machine.ram},
        context=context,
        slots=slots,
        facts=_facts(shape),
        weights=weights,
    )
    for quant in chosen:
        if quant in VLLM_QUANTS:
            result.placements.append(_vllm(shape, machine, quant, context, slots))
        else:
            result.placements.append(_llamacpp(shape, machine, quant, context, slots))
    result.summary = _summary(result)
    return result


def _facts(shape: ModelShape) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "parameters": shape.parameters,
        "active_parameters": shape.active_parameters,
        "layers": shape.layers,
        "attention_layers": shape.attention_layers,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.key_dim,
        "kv_bytes_per_token": shape.kv_bytes_per_token(),
        "state_bytes_per_sequence": shape.state_bytes,
        "trained_context": shape.trained_context,
    }
    if shape.experts:
        facts.update(experts=shape.experts, experts_used=shape.experts_used)
    return facts


def _cache(shape: ModelShape, context: int, slots: int) -> int:
    return shape.kv_bytes_per_token() * context * slots + shape.state_bytes * slots


def _speed(
    gpu_read: float, ram_read: float, pcie: float, machine: Machine
) -> tuple[float, float, str]:
    """(expected tokens/s, the bandwidth bound, its class) for one sequence."""
    seconds = gpu_read / machine.gpu_bandwidth + ram_read / machine.ram_bandwidth
    seconds += pcie / PCIE_BYTES_PER_S
    bound = 1 / seconds if seconds > 0 else math.inf
    rate = bound * EFFICIENCY
    if rate >= 30:
        kind = "fast: comfortable chat"
    elif rate >= 10:
        kind = "interactive"
    elif rate >= 3:
        kind = "slow: batch work, patient chat"
    else:
        kind = "too slow for chat"
    return rate, bound, kind


def _llamacpp(shape: ModelShape, m: Machine, quant: str, context: int, slots: int) -> Placement:
    total, experts = weight_bytes(shape, quant)
    cache = _cache(shape, context, slots)
    embed = int(shape.vocab * shape.hidden * BITS_PER_WEIGHT.get(quant, 16) / 8)
    active = int(shape.active_parameters * total / max(1, shape.parameters))
    touched_experts = int(experts * shape.experts_used / max(1, shape.experts)) if experts else 0
    kv_read = shape.kv_bytes_per_token() * context / 2  # a token reads the cache so far
    flags = f"-c {context * slots} -np {slots}"
    if m.gpu == 0:  # CPU only: everything in RAM (what Corral's llamacpp engine runs here)
        layers = shape.file_layer_bytes or total - embed
        repacked = layers if m.repacks else 0
        ram = total + repacked + cache + LLAMACPP_PROCESS + _cpu_buffers(shape, context * slots)
        rate, bound, kind = _speed(0, active + kv_read, 0, m)
        fits = ram <= m.ram or m.ram == 0
        longest = _longest(m.ram - (total + LLAMACPP_PROCESS), shape, slots, context)
        return Placement(
            "llama.cpp", quant, "CPU only", flags, 0, ram, fits, longest, rate, bound, kind,
            "No GPU: weights, KV cache and buffers all in RAM; decoding reads the active "
            "weights from RAM each token.",
        )  # fmt: skip
    room = m.gpu - LLAMACPP_GPU_OVERHEAD
    if total - embed + cache <= room:  # everything but the token embeddings (always CPU)
        rate, bound, kind = _speed(active + kv_read, 0, 0, m)
        longest = _longest(room - (total - embed), shape, slots, context)
        return Placement(
            "llama.cpp", quant, "all layers on the GPU", f"{flags} -ngl 999",
            total - embed + cache + LLAMACPP_GPU_OVERHEAD, embed + LLAMACPP_PROCESS, True,
            longest, rate, bound, kind, "Weights and KV cache fit on the GPU.",
        )  # fmt: skip
    if experts and total - experts - embed + cache <= room:
        gpu_part = total - experts - embed
        ram = experts + embed + LLAMACPP_PROCESS
        rate, bound, kind = _speed(active - touched_experts + kv_read, touched_experts, 0, m)
        longest = _longest(room - gpu_part, shape, slots, context)
        return Placement(
            "llama.cpp", quant, "experts in RAM, the rest on the GPU",
            f'{flags} -ngl 999 --override-tensor "_exps=CPU"',
            gpu_part + cache + LLAMACPP_GPU_OVERHEAD, ram, ram <= m.ram, longest, rate, bound, kind,
            f"The {shape.experts} experts' weights ({_gib(experts)}) stay in RAM; attention, "
            f"shared weights and the KV cache go on the GPU. Each token reads only its "
            f"{shape.experts_used} experts from RAM, so RAM bandwidth, not PCIe, sets the pace.",
        )  # fmt: skip
    per_layer = (total - embed) / max(1, shape.layers)
    per_layer_cache = cache / max(1, shape.layers)
    on_gpu = max(0, min(shape.layers, int(room // (per_layer + per_layer_cache))))
    gpu_bytes = int(on_gpu * (per_layer + per_layer_cache))
    ram = total - int(on_gpu * per_layer) + (cache - int(on_gpu * per_layer_cache))
    ram += LLAMACPP_PROCESS
    share = on_gpu / max(1, shape.layers)
    rate, bound, kind = _speed((active + kv_read) * share, (active + kv_read) * (1 - share), 0, m)
    return Placement(
        "llama.cpp", quant, f"{on_gpu} of {shape.layers} layers on the GPU",
        f"{flags} -ngl {on_gpu}", gpu_bytes + LLAMACPP_GPU_OVERHEAD, ram, ram <= m.ram,
        context, rate, bound, kind,
        f"Only {on_gpu} layers fit on the GPU; the other {shape.layers - on_gpu} run on "
        "the CPU from RAM, which sets the pace.",
    )  # fmt: skip


def _cpu_buffers(shape: ModelShape, cells: int) -> int:
    """llama.cpp's CPU compute buffer for a 512-token micro-batch: logits, the
    feed-forward and a few hidden-size activations in float32, plus about 1 KiB a
    context cell (fitted to llama.cpp's own "compute buffer size" on four shapes and two
    context sizes, within 4 MiB)."""
    ffn = shape.ffn or 4 * shape.hidden
    return 512 * 4 * (shape.vocab + ffn + 8 * shape.hidden) + cells * 1024


def _vllm(shape: ModelShape, m: Machine, quant: str, context: int, slots: int) -> Placement:
    total, _ = weight_bytes(shape, quant)
    cache = _cache(shape, context, slots)
    usable = int(m.gpu * 0.9) - VLLM_GPU_OVERHEAD
    offload = max(0, total + cache - usable)
    offload_gb = math.ceil(offload / GiB)
    ram = offload_gb * GiB + VLLM_PROCESS
    active = int(shape.active_parameters * total / max(1, shape.parameters))
    kv_read = shape.kv_bytes_per_token() * context / 2
    flags = f"--max-model-len {context} --max-num-seqs {slots} --gpu-memory-utilization 0.9"
    if m.gpu == 0:
        return Placement(
            "vLLM", quant, "needs a GPU", "", 0, 0, False, 0, 0.0, 0.0, "no GPU",
            "vLLM's quantized kernels (GPTQ, AWQ, FP8) need a GPU.",
        )  # fmt: skip
    if offload_gb:
        flags += f" --cpu-offload-gb {offload_gb}"
    # Offloaded weights cross PCIe on every forward step, all of them, experts or not.
    rate, bound, kind = _speed(active + kv_read, 0, offload_gb * GiB, m)
    longest = _longest(usable + offload_gb * GiB - total, shape, slots, context)
    fits = ram <= m.ram and offload < total
    why = (
        "Weights and KV cache fit in 90% of the GPU."
        if not offload_gb
        else f"{offload_gb} GiB of weights live in RAM and are copied over PCIe on every "
        "step (vLLM offloads whole weights, not just the experts a token uses)."
    )
    how = "all on the GPU" if not offload_gb else f"{offload_gb} GiB offloaded to RAM"
    return Placement(
        "vLLM", quant, how, flags, min(m.gpu, total + cache + VLLM_GPU_OVERHEAD - offload),
        ram, fits, longest, rate, bound, kind, why,
    )  # fmt: skip


def _longest(room: float, shape: ModelShape, slots: int, asked: int) -> int:
    """The longest context per slot that ``room`` bytes of cache hold (capped at the
    model's own)."""
    per_token = shape.kv_bytes_per_token() * slots
    free = room - shape.state_bytes * slots
    if per_token <= 0 or free <= 0:
        return 0
    longest = int(free // per_token)
    return min(longest, shape.trained_context) if shape.trained_context else longest


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _summary(p: Plan) -> str:
    good = [x for x in p.placements if x.fits]
    if not good:
        return "It does not fit on this machine in any of the ways planned."
    best = max(good, key=lambda x: x.tokens_per_s)
    return (
        f"Best: {best.engine} at {best.quant}, {best.how}: about {best.tokens_per_s:.0f} "
        f"tokens/s ({best.speed_class}; at most {best.tokens_per_s_bound:.0f}), up to "
        f"{best.max_context:,} tokens of context per slot. {best.why}"
    )


# --- where shapes come from -------------------------------------------------------------


class PlanError(ValueError):
    """A model the planner cannot read, saying why."""


def shape_of_record(record: ModelRecord) -> ModelShape:
    """A registry model's shape: its GGUF header, or its repo's config.json."""
    if record.format == "gguf":
        return shape_of_gguf(record.path, record.name)
    if record.format == "safetensors":
        shape = shape_of_config(record.path / "config.json", record.name)
        if record.info.parameters:  # counted from the files at import: exact
            shape = replace(shape, parameters=record.info.parameters)
        return shape
    raise PlanError(f"'{record.name}' is a {record.format} model; plans are for language models")


def shape_of_path(path: Path) -> ModelShape:
    """A GGUF file, a config.json, or a directory holding one."""
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise PlanError(f"{path}: no such file")
    if path.suffix == ".gguf" or path.read_bytes()[:4] == b"GGUF":
        return shape_of_gguf(path, path.stem)
    return shape_of_config(path, path.parent.name or path.stem)


def shape_of_gguf(path: Path, name: str) -> ModelShape:
    header = read_header(path)
    info = read_gguf_info(path)
    return shape_from_gguf(
        header.metadata,
        header.tensor_bytes(),
        name=name,
        quant=info.quantization,
        parameters=info.parameters,
        vocab=info.vocab_size,
    )


def shape_of_config(path: Path, name: str) -> ModelShape:
    try:
        config = json.loads(path.read_text())
        return shape_from_config(config, name)
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a model config.json this planner reads ({exc!r})") from None
