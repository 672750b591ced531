"""The vllm engine's gateway side: Corral's parameters as vLLM's flags, its memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.engines.catalog import load_catalog
from corral.engines.descriptor import LaunchContext
from corral.engines.foreign import SUPERVISOR
from corral.engines.vllm.descriptor import SERVER_MODULE, VllmParams, descriptor, vllm_args
from corral.errors import EngineLoadError, InvalidRequest
from corral.registry.records import ModelRecord
from corral.registry.store import Registry
from tests.support.hf_models import tiny_llama

CTX = LaunchContext(host="127.0.0.1", port=40001, log_level="info", spool_dir=Path("/tmp/s"))
GiB = 1 << 30


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> ModelRecord:
    home = tmp_path_factory.mktemp("vllm-home")
    store = Registry(home)
    source = tiny_llama()
    return store.import_path(source, "tiny", params={"engine": "vllm"})


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_parameter_maps_to_its_vllm_flag(record: ModelRecord) -> None:
    params = VllmParams(
        vllm_python="/opt/vllm/bin/python",
        slots=8,
        context_length=32768,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
        quantization="awq",
        cpu_offload_gb=12,
        kv_cache_dtype="fp8",
        prefix_caching="on",
        speculative_config={"method": "ngram", "num_speculative_tokens": 4},
        sleep_mode=True,
        extra_args=["--enforce-eager"],
    )
    args = vllm_args(record, params, "127.0.0.1", 40001)
    assert flag(args, "--model") == str(record.path)
    assert flag(args, "--served-model-name") == "tiny:latest"
    assert flag(args, "--port") == "40001" and flag(args, "--max-num-seqs") == "8"
    assert flag(args, "--max-model-len") == "32768"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--gpu-memory-utilization") == "0.85"
    assert flag(args, "--quantization") == "awq" and flag(args, "--cpu-offload-gb") == "12"
    assert flag(args, "--kv-cache-dtype") == "fp8"
    assert flag(args, "--speculative-config") == '{"method": "ngram", "num_speculative_tokens": 4}'
    assert "--enable-prefix-caching" in args and "--enable-sleep-mode" in args
    assert args[-1] == "--enforce-eager"


def test_defaults_leave_vllm_its_own_choices(record: ModelRecord) -> None:
    args = vllm_args(record, VllmParams(), "127.0.0.1", 40001)
    for absent in ("--max-model-len", "--quantization", "--cpu-offload-gb", "--enable-sleep-mode"):
        assert absent not in args
    assert not any("prefix-caching" in a for a in args)
    cpu = vllm_args(record, VllmParams(device="cpu"), "127.0.0.1", 1)
    assert "--gpu-memory-utilization" not in cpu


def test_the_worker_is_vllms_own_server_under_the_supervisor(record: ModelRecord) -> None:
    params = VllmParams(vllm_python="/opt/vllm/bin/python", sleep_mode=True, device="cpu")
    command = descriptor.command(record, params, CTX)
    assert command.argv[2] == SUPERVISOR
    rest = command.argv[command.argv.index("--") + 1 :]
    assert rest[:3] == ("/opt/vllm/bin/python", "-m", SERVER_MODULE)
    assert command.env["VLLM_SERVER_DEV_MODE"] == "1"  # /sleep and /wake_up
    assert command.env["VLLM_TARGET_DEVICE"] == "cpu"
    assert command.foreign is not None and command.foreign.served_name == "tiny:latest"
    assert command.start_timeout == 900


def test_without_a_vllm_python_the_load_fails_saying_how_to_fix_it(record: ModelRecord) -> None:
    with pytest.raises(EngineLoadError, match="CORRAL_VLLM_PYTHON"):
        descriptor.command(record, VllmParams(), CTX)


def test_the_vllm_python_comes_from_the_environment(record: ModelRecord) -> None:
    catalog = load_catalog(environ={"CORRAL_VLLM_PYTHON": "/venvs/vllm/bin/python"})
    params = catalog.params(record)
    assert isinstance(params, VllmParams) and params.vllm_python == "/venvs/vllm/bin/python"
    with pytest.raises(InvalidRequest, match="vllm parameter gpu_memory_utilization"):
        catalog.check_configuration(record, {"engine": "vllm", "gpu_memory_utilization": 1.5})


def test_memory_vram_share_on_gpus_weights_in_ram_on_cpu(record: ModelRecord) -> None:
    two = VllmParams(gpu_memory_utilization=0.5, tensor_parallel_size=2)
    gpu = descriptor.estimate(record, two)
    assert gpu.vram == record.size and gpu.vram_share == 0.5 and gpu.devices == 2
    assert gpu.weights == 0
    offloaded = descriptor.estimate(record, VllmParams(cpu_offload_gb=100))
    assert offloaded.vram == 0 and offloaded.weights == record.size
    cpu = descriptor.estimate(record, VllmParams(device="cpu", cpu_kv_cache_gb=2))
    assert cpu.vram == 0 and cpu.weights == record.size and cpu.kv_cache == 2 * GiB
