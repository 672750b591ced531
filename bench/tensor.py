"""Tensor models: Corral's onnx engine over V2 (REST and gRPC) against onnxruntime in
this process and against MLServer serving the same scikit-learn model.

Two models, trained here on scikit-learn's bundled digits (64 features, 10 classes):
a random forest (cheap: the request costs far more than the model) and an MLP with
four hidden layers of 2,048 (12.7M parameters, 51 MB: one row costs a read of every
weight, so rows stacked into one call cost little more than one). Each is converted with
skl2onnx for Corral and onnxruntime, and saved with joblib for MLServer (its
scikit-learn runtime). One row per request, JSON tensors over REST (what both servers
take), raw tensors over gRPC; 1 client and 32 clients, each for ``--seconds``.

Sides, one at a time, same machine, one thread each for the model:
- onnxruntime in this process (1 client only: no server);
- Corral V2 REST, dynamic batching on, then off (``dynamic_batching: false``);
- Corral V2 gRPC (grpcio's asyncio client on Corral's own generated stubs), batching
  on, then off;
- onnxruntime in this process again, reading 64 MB of other memory between calls
  (what a server's own work between requests does to the CPU's caches);
- MLServer (``mlserver``, ``mlserver-sklearn`` in their own venv: ``--mlserver-python``),
  its defaults.

    python bench/tensor.py --mlserver-python /tmp/mlserver-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.serving import start_corral, wait_http  # noqa: E402
from corral.registry.store import Registry  # noqa: E402
from corral.scheduler.launch import free_port  # noqa: E402


def train(directory: Path) -> dict[str, dict[str, Any]]:
    import joblib
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    models = {
        "forest": RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0),
        "mlp": MLPClassifier(hidden_layer_sizes=(2048,) * 4, max_iter=2, random_state=0),
    }
    out = {}
    for name, estimator in models.items():
        estimator.fit(x, y)
        onnx_path = directory / f"{name}.onnx"
        # Probabilities as a plain tensor, as MLServer's predict_proba would give.
        onnx_path.write_bytes(
            to_onnx(
                estimator, x[:1], options={id(estimator): {"zipmap": False}}
            ).SerializeToString()
        )
        mls = directory / "mlserver" / name
        mls.mkdir(parents=True)
        joblib.dump(estimator, mls / "model.joblib")
        (mls / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib"},
                }
            )
        )
        out[name] = {"onnx": onnx_path, "x": x}
    return out


async def load_test(
    send: Callable[[np.ndarray[Any, Any]], Awaitable[None]],
    x: np.ndarray[Any, Any],
    clients: int,
    seconds: float,
) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            row = x[i % len(x) : i % len(x) + 1]
            started = time.perf_counter()
            await send(row)
            latencies.append(time.perf_counter() - started)
            i += clients

    for i in range(clients):  # warm-up: a few requests each
        await send(x[i : i + 1])
    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 3),
    }


def rest_sender(
    session: aiohttp.ClientSession, url: str, input_name: str
) -> Callable[[np.ndarray[Any, Any]], Awaitable[None]]:
    async def send(row: np.ndarray[Any, Any]) -> None:
        body = {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(row.shape),
                    "datatype": "FP32",
                    "data": row.ravel().tolist(),
                }
            ]
        }
        async with session.post(url, json=body) as reply:
            if reply.status != 200:
                raise RuntimeError(await reply.text())
            await reply.read()

    return send


async def through_rest(url: str, input_name: str, x: Any, clients: int, seconds: float) -> Any:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await load_test(rest_sender(session, url, input_name), x, clients, seconds)


async def through_grpc(target: str, model: str, x: Any, clients: int, seconds: float) -> Any:
    import grpc

    from corral.protocol.grpc import predict_v2_pb2 as pb
    from corral.protocol.grpc import predict_v2_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def send(row: np.ndarray[Any, Any]) -> None:
            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name="X", datatype="FP32", shape=list(row.shape))
            request.raw_input_contents.append(row.tobytes())
            await stub.ModelInfer(request)

        return await load_test(send, x, clients, seconds)


def in_process(
    onnx_path: Path, x: np.ndarray[Any, Any], seconds: float, evict: bool = False
) -> dict[str, float]:
    """One client calling onnxruntime back to back; with ``evict``, 64 MB of other
    memory is read between calls (outside the timed call), as a server's own work
    between requests pushes the model's weights out of the CPU's caches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    other = np.ones(64 << 20, dtype=np.uint8)

    async def send(row: np.ndarray[Any, Any]) -> None:
        session.run(None, {"X": row})

    if not evict:
        return asyncio.run(load_test(send, x, 1, seconds))

    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < stop:
        int(other.sum(dtype=np.uint64))  # read 64 MB: the caches now hold other data
        row = x[i % len(x) : i % len(x) + 1]
        started = time.perf_counter()
        session.run(None, {"X": row})
        latencies.append(time.perf_counter() - started)
        i += 1
    return {"calls": len(latencies), "p50_ms": round(statistics.median(latencies) * 1000, 3)}


def corral_side(
    models: dict[str, dict[str, Any]], args: argparse.Namespace, batching: bool
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        registry = Registry(home)
        for name, model in models.items():
            registry.import_path(model["onnx"], name)
        registry.close()
        grpc_port = free_port()
        env = {
            "CORRAL_INTRA_OP_THREADS": "1",
            "CORRAL_GRPC_PORT": str(grpc_port),
            "CORRAL_DYNAMIC_BATCHING": "1" if batching else "0",
        }
        proc, url = start_corral(home, 1, slots=32, extra_env=env)
        try:
            for name, model in models.items():
                x = model["x"]
                infer = f"{url}/v2/models/{name}/infer"
                entry: dict[str, Any] = {}
                for clients in (1, 32):
                    entry[f"rest_{clients}"] = asyncio.run(
                        through_rest(infer, "X", x, clients, args.seconds)
                    )
                    entry[f"grpc_{clients}"] = asyncio.run(
                        through_grpc(f"127.0.0.1:{grpc_port}", name, x, clients, args.seconds)
                    )
                results[name] = entry
        finally:
            proc.terminate()
            proc.wait(30)
    return results


def mlserver_side(models: dict[str, Any], args: argparse.Namespace, directory: Path) -> Any:
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,  # in the server process, as Corral's one worker per model
    }
    root = directory / "mlserver"
    (root / "settings.json").write_text(json.dumps(settings))
    mlserver = Path(args.mlserver_python).parent / "mlserver"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(mlserver), "start", str(root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}
    try:
        wait_http(url + "/v2/health/ready", proc, timeout=120)
        for name, model in models.items():
            wait_http(f"{url}/v2/models/{name}/ready", proc, timeout=120)
            infer = f"{url}/v2/models/{name}/infer"
            results[name] = {
                f"rest_{c}": asyncio.run(through_rest(infer, "X", model["x"], c, args.seconds))
                for c in (1, 32)
            }
    finally:
        proc.terminate()
        proc.wait(30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--mlserver-python", default=None, help="python of MLServer's venv")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "tensor.json")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        models = train(directory)
        report["onnxruntime_in_process"] = {
            name: in_process(m["onnx"], m["x"], args.seconds) for name, m in models.items()
        }
        report["onnxruntime_in_process_caches_evicted"] = {
            name: in_process(m["onnx"], m["x"], args.seconds, evict=True)
            for name, m in models.items()
        }
        report["corral"] = corral_side(models, args, batching=True)
        report["corral_no_batching"] = corral_side(models, args, batching=False)
        if args.mlserver_python:
            report["mlserver"] = mlserver_side(models, args, directory)
    for name in ("forest", "mlp"):
        c = report["corral"][name]
        ratios: dict[str, float] = {
            "batching_on_over_off_32": c["rest_32"]["requests_per_s"]
            / report["corral_no_batching"][name]["rest_32"]["requests_per_s"],
            "grpc_batching_on_over_off_32": c["grpc_32"]["requests_per_s"]
            / report["corral_no_batching"][name]["grpc_32"]["requests_per_s"],
            "rest_1_p50_overhead_ms": c["rest_1"]["p50_ms"]
            - report["onnxruntime_in_process"][name]["p50_ms"],
        }
        if "mlserver" in report:
            m = report["mlserver"][name]
            ratios["rest_32_over_mlserver"] = (
                c["rest_32"]["requests_per_s"] / m["rest_32"]["requests_per_s"]
            )
            ratios["grpc_32_over_mlserver"] = (
                c["grpc_32"]["requests_per_s"] / m["rest_32"]["requests_per_s"]
            )
        report.setdefault("ratios", {})[name] = {k: round(v, 3) for k, v in ratios.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
