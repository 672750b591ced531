"""A GPU probe with a device table from ``CORRAL_FAKE_GPUS``, for machines without one.

``CORRAL_GPU_PROBE=tests.support.fake_gpus:probe`` hands it to a real server, the way
``CORRAL_ENGINES`` hands it the fake engine. The table is JSON, one object a device:
``[{"name": "RTX 4090", "total": "24GiB", "used": "1GiB"}]``. A process holds what
``CORRAL_FAKE_GPU_PROCESS`` says (bytes), so ``ps`` has an "actual" to show.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection

from corral.scheduler.gpus import GpuDevice
from corral.units import parse_size


class TableGpus:
    def devices(self) -> list[GpuDevice]:
        table = json.loads(os.environ.get("CORRAL_FAKE_GPUS", "[]"))
        return [
            GpuDevice(i, d["name"], parse_size(d["total"]), parse_size(d.get("used", 0)))
            for i, d in enumerate(table)
        ]

    def process_memory(self, pids: Collection[int]) -> int | None:
        held = os.environ.get("CORRAL_FAKE_GPU_PROCESS")
        return int(held) if held else None


probe = TableGpus()
