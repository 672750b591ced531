"""A model called directly, under load: ``python -m corral.engines.onnx.measure``.

``corral bench``'s other side: the same onnxruntime session its worker opens (the same
threads and graph optimisation, ``open_session``), called by N threads for a while
(onnxruntime releases the GIL while it runs). Its own process, as ``inspect`` is, so
that the CLI imports no engine library and its clients do not share this one's cores'
interpreter. Reads one JSON object on stdin::

    {"path": ..., "params": {...}, "inputs": [V2 input metadata], "duration": 10,
     "runs": [[batch_size, concurrency], ...]}

and prints a JSON list of results (``Measured.to_dict``), one per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from corral.engines.onnx.descriptor import OnnxParams
from corral.engines.onnx.engine import feedable, open_session
from corral.latency import Measured, in_threads
from corral.protocol.tensors import random_inputs


def measure(job: dict[str, Any]) -> list[dict[str, Any]]:
    session = open_session(Path(job["path"]), OnnxParams.model_validate(job["params"]))
    results = []
    for batch, concurrency in job["runs"]:
        try:
            inputs = random_inputs(job["inputs"], batch)
        except ValueError as exc:
            skipped = Measured("in-process", batch, concurrency)
            skipped.failed(str(exc))
            results.append(skipped.to_dict())
            continue
        feed = {name: feedable(value) for name, value in inputs.items()}

        def call(feed: dict[str, Any] = feed) -> object:
            return session.run(None, feed)

        measured = in_threads(call, batch, concurrency, job["duration"])
        results.append(measured.to_dict())
    return results


def main() -> None:
    print(json.dumps(measure(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
