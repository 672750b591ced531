"""This machine's facts for the fit planner: GPU memory, RAM, whether llama.cpp's CPU
backend repacks weights here. Anything the caller gives wins over what is found."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from corral.engines.plan import Machine
from corral.protocol.plan import PlanRequest
from corral.scheduler.gpus import load_gpu_probe
from corral.units import parse_size


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_facts(ask: PlanRequest, gpu_probe: str = "") -> Machine:
    """The machine ``ask`` describes, the gaps filled in from this one."""
    import psutil

    if ask.gpu is not None:
        gpu = parse_size(ask.gpu)
    else:
        devices = load_gpu_probe(gpu_probe).devices()
        gpu = max((d.total for d in devices), default=0)
    ram = parse_size(ask.ram) if ask.ram is not None else int(psutil.virtual_memory().total)
    machine = Machine(gpu=gpu, ram=ram, repacks=bool({"amx_int8", "amx_bf16"} & cpu_flags()))
    if ask.gpu_bandwidth is not None:
        machine = replace(machine, gpu_bandwidth=parse_size(ask.gpu_bandwidth))
    if ask.ram_bandwidth is not None:
        machine = replace(machine, ram_bandwidth=parse_size(ask.ram_bandwidth))
    return machine
