"""What a worker asks of a Ray node, and what the gateway says when none has it.

The placement itself is tested on a real local cluster
(``tests/integration/test_ray_cluster.py``); these need no Ray at all.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from textwrap import dedent

from corral.engines.descriptor import MemoryEstimate, WorkerResources
from corral.engines.llamacpp.descriptor import LlamaCppParams
from corral.engines.llamacpp.descriptor import descriptor as llamacpp
from corral.registry.declared import load_declarations
from corral.registry.gguf_info import ModelInfo
from corral.registry.records import ModelRecord
from corral.scheduler.ray_workers import RayCluster, RayNode, ray_resources

GiB = 1 << 30
TEXT = ModelInfo("gguf", "llama", 1, "F16", 2048, 64, True, False)


def record(**params: object) -> ModelRecord:
    base = ModelRecord("m:latest", Path("/m.gguf"), 1 << 20, "abc", 0.0, TEXT)
    return replace(base, params=dict(params))


def test_a_worker_asks_for_its_threads_its_memory_and_its_declared_labels() -> None:
    estimate = MemoryEstimate(weights=GiB, kv_cache=GiB // 2, buffers=0, process=0)
    ask = llamacpp.resources(
        record(resources={"a100": 1, "zone-a": 0.5}), LlamaCppParams(threads=3), estimate
    )
    assert ask == WorkerResources(
        cpus=3.0, gpus=0.0, memory=GiB + GiB // 2, custom={"a100": 1.0, "zone-a": 0.5}
    )
    on_gpus = replace(estimate, vram=8 * GiB, devices=2)
    assert llamacpp.resources(record(), LlamaCppParams(threads=1), on_gpus).gpus == 2.0


def test_ray_names_and_what_no_node_could_hold() -> None:
    ask = WorkerResources(cpus=2, gpus=0, memory=3 * GiB, custom={"a100": 1})
    assert ray_resources(ask) == {"CPU": 2.0, "memory": float(3 * GiB), "a100": 1.0}
    cluster = RayCluster("127.0.0.1:1")
    assert cluster.infeasible(ask) == "the Ray cluster has no live node"
    cluster.nodes = [
        RayNode("aaaaaaaa11", "10.0.0.1", {"CPU": 0, "memory": 64 * GiB}),  # a head
        RayNode("bbbbbbbb22", "10.0.0.2", {"CPU": 8, "memory": 2 * GiB, "a100": 4}),
        RayNode("cccccccc33", "10.0.0.3", {"CPU": 8, "memory": 32 * GiB}),
    ]
    why = cluster.infeasible(ask)
    assert why is not None and why.startswith("no Ray node has CPU=2, a100=1, memory=3.0 GiB")
    assert "10.0.0.2 bbbbbbbb: CPU=8, a100=4, memory=2.0 GiB" in why
    # Fits a node's totals: Ray places it when that node has room, no refusal.
    assert cluster.infeasible(replace(ask, memory=GiB)) is None
    # What models may use in all: the nodes workers can run on (a CPU-less head is not).
    assert cluster.memory() == 34 * GiB


def test_corral_yaml_declares_a_models_resources(tmp_path: Path) -> None:
    path = tmp_path / "corral.yaml"
    path.write_text(
        dedent(
            """
            version: 1
            models:
              big:
                source: ./big.gguf
                resources: {a100: 1, "zone.eu-1": 0.5}
            """
        )
    )
    (model,) = load_declarations(path)
    assert model.params == {"resources": {"a100": 1, "zone.eu-1": 0.5}}


def test_the_ordinary_path_imports_no_ray() -> None:
    code = (
        "import sys, corral.cli.main, corral.api.app, corral.scheduler.runtime;"
        "from corral.settings import Settings;"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
