"""The ``vllm`` engine: ``vllm serve`` from its own Python, as a Corral worker.

vLLM pins its own torch (and CUDA build), so it never shares Corral's environment:
``vllm_python`` (``CORRAL_VLLM_PYTHON``) names the interpreter of the venv it is
installed in, and the gateway runs its OpenAI server from there, under the same
supervisor and translation as any foreign server (``corral.engines.foreign``).
Corral's parameters map one to one onto vLLM's flags (``vllm_args``), so
``corral ps`` shows what the server was started with.

Sleep mode (``sleep_mode: true``) starts vLLM with ``--enable-sleep-mode`` and its
``/sleep`` and ``/wake_up`` routes (vLLM serves them only with
``VLLM_SERVER_DEV_MODE=1``). vLLM implements it on CUDA and ROCm only.

Memory: vLLM takes ``gpu_memory_utilization`` of each GPU it runs on whatever the
model (``vram_share``); RAM is the process (Python, torch, vLLM: ~2.5 GiB measured on
CPU), the weights offloaded with ``cpu_offload_gb``, and on the CPU backend the
weights and ``VLLM_CPU_KVCACHE_SPACE``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from corral.engines.descriptor import (
    EngineDescriptor,
    EngineParams,
    LaunchContext,
    MemoryEstimate,
    WorkerCommand,
)
from corral.engines.foreign import supervised
from corral.errors import EngineLoadError
from corral.registry.records import Capability, ModelRecord

GiB = 1 << 30
PROCESS_BYTES = int(2.5 * GiB)
TEXT = frozenset({Capability.CHAT, Capability.COMPLETION})
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class VllmParams(EngineParams):
    vllm_python: str = Field(
        "",
        description="The python of the venv vLLM is installed in (it pins its own torch, "
        "so never Corral's).",
    )
    slots: int = Field(
        64, ge=1, le=4096, description="Requests sent at once (vLLM's --max-num-seqs)."
    )
    context_length: int = Field(0, ge=0, description="--max-model-len; 0 = the model's own.")
    device: Literal["cuda", "cpu"] = Field(
        "cuda", description="cpu for the vllm-cpu build (weights and KV cache in RAM)."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs one model spans.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory vLLM takes."
    )
    quantization: str = Field(
        "",
        pattern=r"^[a-z0-9_-]*$",
        description="gptq, awq, fp8, ... ('' = as the checkpoint says).",
    )
    dtype: str = Field("auto", pattern=r"^[a-z0-9_]+$", description="--dtype.")
    cpu_offload_gb: float = Field(
        0, ge=0, description="Weights kept in RAM and streamed to the GPU (GiB)."
    )
    kv_cache_dtype: str = Field(
        "auto", pattern=r"^[a-z0-9_]+$", description="auto, fp8, fp8_e4m3, fp8_e5m2."
    )
    prefix_caching: Literal["auto", "on", "off"] = Field(
        "auto", description="Automatic prefix caching; auto = vLLM's default."
    )
    speculative_config: dict[str, Any] | None = Field(
        None, description="vLLM's --speculative-config, as an object."
    )
    sleep_mode: bool = Field(
        False,
        description="--enable-sleep-mode: an evicted model sleeps (weights to RAM) "
        "instead of stopping, and wakes in seconds (CUDA and ROCm only).",
    )
    cpu_kv_cache_gb: float = Field(
        4, gt=0, description="KV cache in RAM on the CPU backend (VLLM_CPU_KVCACHE_SPACE)."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More vllm serve arguments, as given."
    )
    start_timeout: float = Field(
        900, ge=0, description="Seconds vLLM may take to start (a cold start is minutes)."
    )
    stop_grace: float = Field(20, ge=0, le=600, description="Seconds between SIGTERM and SIGKILL.")


def vllm_args(record: ModelRecord, params: VllmParams, host: str, port: int) -> list[str]:
    """The OpenAI server's arguments for ``record`` with ``params``."""
    args = [
        *("--model", str(record.path), "--served-model-name", record.name),
        *("--host", host, "--port", str(port)),
        *("--max-num-seqs", str(params.slots), "--dtype", params.dtype),
        *("--tensor-parallel-size", str(params.tensor_parallel_size)),
        *("--kv-cache-dtype", params.kv_cache_dtype),
    ]
    if params.device == "cuda":
        args += ["--gpu-memory-utilization", str(params.gpu_memory_utilization)]
    if params.context_length:
        args += ["--max-model-len", str(params.context_length)]
    if params.quantization:
        args += ["--quantization", params.quantization]
    if params.cpu_offload_gb:
        args += ["--cpu-offload-gb", f"{params.cpu_offload_gb:g}"]
    if params.prefix_caching != "auto":
        on = params.prefix_caching == "on"
        args.append("--enable-prefix-caching" if on else "--no-enable-prefix-caching")
    if params.speculative_config:
        args += ["--speculative-config", json.dumps(params.speculative_config)]
    if params.sleep_mode:
        args.append("--enable-sleep-mode")
    return [*args, *params.extra_args]


class VllmDescriptor(EngineDescriptor):
    name = "vllm"
    formats = frozenset({"safetensors"})  # a Hugging Face model directory
    params_model = VllmParams

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        return TEXT

    def sleeps(self, params: EngineParams) -> bool:
        return isinstance(params, VllmParams) and params.sleep_mode

    def command(
        self, record: ModelRecord, params: EngineParams, ctx: LaunchContext
    ) -> WorkerCommand:
        assert isinstance(params, VllmParams)
        if not params.vllm_python:
            raise EngineLoadError(
                f"The model '{record.name}' runs on vLLM, but no vLLM is configured: set "
                "CORRAL_VLLM_PYTHON to the python of the venv vLLM is installed in "
                "(python -m venv /opt/vllm && /opt/vllm/bin/pip install vllm)."
            )
        env = {"VLLM_CPU_KVCACHE_SPACE": f"{params.cpu_kv_cache_gb:g}"}
        if params.device == "cpu":
            env["VLLM_TARGET_DEVICE"] = "cpu"
        if params.sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # serves /sleep and /wake_up
        argv = [params.vllm_python, "-m", SERVER_MODULE]
        command = supervised(
            ctx,
            argv + vllm_args(record, params, ctx.host, ctx.port),
            grace=params.stop_grace,
            env=env,
            start_timeout=params.start_timeout or None,
            served_name=record.name,
        )
        if params.sleep_mode:  # level 1: weights to RAM, KV cache dropped
            command = replace(command, sleep_path="/sleep?level=1", wake_path="/wake_up")
        return command

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        assert isinstance(params, VllmParams)
        offloaded = int(params.cpu_offload_gb * GiB)
        if params.device == "cpu":
            kv = int(params.cpu_kv_cache_gb * GiB)
            return MemoryEstimate(
                weights=record.size, kv_cache=kv, buffers=0, process=PROCESS_BYTES
            )
        return MemoryEstimate(
            weights=min(offloaded, record.size),
            kv_cache=0,
            buffers=0,
            process=PROCESS_BYTES,
            vram=max(0, record.size - offloaded),
            vram_share=params.gpu_memory_utilization,
            devices=params.tensor_parallel_size,
        )


descriptor = VllmDescriptor()
