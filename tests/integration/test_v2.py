"""The onnx engine behind the Open Inference Protocol (V2) over REST.

Real scikit-learn models (trained on its bundled datasets, converted with skl2onnx)
are called with ``tritonclient.http``, the client Triton's users run, and with plain
HTTP for the ugly cases. Answers are checked against scikit-learn's own.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
httpclient = pytest.importorskip("tritonclient.http")

from corral.registry.store import Registry  # noqa: E402
from corral.scheduler.launch import free_port  # noqa: E402
from tests.support.models import EMBED, model_file  # noqa: E402
from tests.support.onnx_models import (  # noqa: E402
    SklearnModel,
    sklearn_models,
    word_ids,
)
from tests.support.server import CorralServer  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SklearnModel]:
    return sklearn_models(tmp_path_factory.mktemp("onnx-models"), "diabetes")


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, SklearnModel]
) -> Iterator[CorralServer]:
    home: Path = tmp_path_factory.mktemp("v2-home")
    registry = Registry(home)
    for name, model in models.items():
        # digits waits up to 50 ms to fill a call: the batching test must not depend on
        # how fast this (2-core, busy) machine's clients can send.
        params: dict[str, object] | None = None
        if name == "digits":
            params = {"max_queue_delay_ms": 50}
        elif name == "diabetes":  # IO binding on, though CPU would not choose it
            params = {"io_binding": "on"}
        registry.import_path(model.path, name, params=params)
    registry.import_path(models["iris"].path, "iris:2")
    registry.import_path(word_ids(tmp_path_factory.mktemp("words")), "words")
    registry.import_path(model_file(EMBED), "chatty")
    registry.close()
    server = CorralServer(home, intra_op_threads=1, threads=1, grpc_port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def client(srv: CorralServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=120)


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> object:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [False, True])
def test_iris_labels_and_probabilities_equal_scikit_learn(
    client: httpclient.InferenceServerClient, models: dict[str, SklearnModel], binary: bool
) -> None:
    model = models["iris"]
    x = model.x[::7]
    outputs = [
        httpclient.InferRequestedOutput("output_label", binary_data=binary),
        httpclient.InferRequestedOutput("output_probability", binary_data=binary),
    ]
    result = client.infer("iris", [_input("X", x, "FP32", binary)], outputs=outputs)
    assert result.as_numpy("output_label").tolist() == model.estimator.predict(x).tolist()
    np.testing.assert_allclose(
        result.as_numpy("output_probability"), model.estimator.predict_proba(x), atol=1e-5
    )


def test_string_labels_come_back_as_bytes(
    client: httpclient.InferenceServerClient, models: dict[str, SklearnModel]
) -> None:
    model = models["iris-names"]
    x = model.x[::25]
    expected = model.estimator.predict(x).tolist()
    binary = client.infer("iris-names", [_input("X", x, "FP32", True)])  # all outputs binary
    assert [v.decode() for v in binary.as_numpy("output_label")] == expected
    as_json = client.infer(
        "iris-names",
        [_input("X", x, "FP32", False)],
        outputs=[httpclient.InferRequestedOutput("output_label", binary_data=False)],
    )
    assert as_json.as_numpy("output_label").tolist() == expected  # JSON: str
    assert as_json.as_numpy("output_probability") is None  # only what was asked for


def test_bytes_inputs_binary_and_json(client: httpclient.InferenceServerClient) -> None:
    words = np.array([b"guitar", b"otter", b"nothing", "caf\u00e9".encode()], dtype=object)
    for binary in (True, False):
        result = client.infer("words", [_input("word", words, "BYTES", binary)])
        assert result.as_numpy("id").tolist() == [1, 2, -1, 3]


def test_digits_and_a_regressor(
    client: httpclient.InferenceServerClient, models: dict[str, SklearnModel]
) -> None:
    digits = models["digits"]
    x = digits.x[:64]
    result = client.infer("digits", [_input("X", x, "FP32", True)])
    assert result.as_numpy("output_label").tolist() == digits.estimator.predict(x).tolist()
    diabetes = models["diabetes"]
    x = diabetes.x[:50]
    result = client.infer("diabetes", [_input("X", x, "FP32", False)])
    np.testing.assert_allclose(
        result.as_numpy("variable").ravel(), diabetes.estimator.predict(x), rtol=1e-5, atol=1e-3
    )


def test_health_metadata_and_versions(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "2")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata("iris")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_label", "output_probability"]
    server = client.get_server_metadata()
    assert server["name"] == "corral" and "binary_tensor_data" in server["extensions"]


def test_versions_keep_the_old_default_to_the_newest_or_the_marked(
    tmp_path: Path, models: dict[str, SklearnModel]
) -> None:
    """A new import under a tensor model's name is its next version; the old one still
    answers when pinned; the bare name follows the newest until one is marked default;
    ``corral list`` shows the versions and which one the bare name means."""
    import subprocess
    import sys

    home = tmp_path / "home"
    registry = Registry(home)
    assert registry.import_path(models["iris"].path, "iris").name == "iris:1"
    registry.close()
    server = CorralServer(home, intra_op_threads=1, import_dirs=models["iris"].path.parent)
    server.start()
    admin = httpx.Client(base_url=server.url, timeout=120)

    def answer(model: str = "iris") -> tuple[str, object]:
        reply = _post(server, {"inputs": [_x([1, 4])]}, model=model)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        return body["model_version"], body["outputs"][0]["data"][0]

    try:
        assert answer() == ("1", 0)
        imported = admin.post(
            "/admin/models/import", json={"path": str(models["iris-names"].path), "name": "iris"}
        )
        assert imported.status_code == 201 and imported.json()["name"] == "iris:2"
        assert answer() == ("2", "setosa")  # the newest answers the bare name
        assert answer("iris/versions/1") == ("1", 0)  # the old one stays
        marked = admin.put("/admin/models/iris:1/default")
        assert marked.status_code == 200 and marked.json()["default"] is True
        assert answer() == ("1", 0)
        listing = {m["name"]: m["default"] for m in admin.get("/admin/models").json()["models"]}
        assert listing == {"iris:1": True, "iris:2": False}
        shown = subprocess.run(
            [sys.executable, "-m", "corral", "list"],
            env={**server.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert re.search(r"iris:1 \(default\)", shown.stdout), shown.stdout
        assert re.search(r"^iris:2 ", shown.stdout, re.M), shown.stdout
        meta = admin.get("/v2/models/iris").json()
        assert meta["versions"] == ["1", "2"]
        refused = admin.delete("/admin/models/iris")
        assert refused.status_code == 400 and "iris:1, iris:2" in refused.text
        assert admin.delete("/admin/models/iris/default").json()["name"] == "iris:2"
        assert answer() == ("2", "setosa")
    finally:
        admin.close()
        server.stop()


def test_a_pinned_version_answers_with_its_name(
    client: httpclient.InferenceServerClient, models: dict[str, SklearnModel]
) -> None:
    x = models["iris"].x[:2]
    result = client.infer("iris", [_input("X", x, "FP32", True)], model_version="2")
    assert result.get_response()["model_name"] == "iris"
    assert result.get_response()["model_version"] == "2"
    assert result.as_numpy("output_label").tolist() == [0, 0]


def test_gzip_and_deflate_request_bodies(
    client: httpclient.InferenceServerClient, models: dict[str, SklearnModel]
) -> None:
    x = models["iris"].x[:5]
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "iris", [_input("X", x, "FP32", True)], request_compression_algorithm=algorithm
        )
        assert result.as_numpy("output_label").tolist() == [0] * 5


def _post(srv: CorralServer, body: object, model: str = "iris", **kw: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{srv.url}/v2/models/{model}/infer",
        content=content,
        timeout=60,
        **kw,  # type: ignore[arg-type]
    )


def _x(shape: list[int], datatype: str = "FP32", name: str = "X") -> dict[str, object]:
    count = int(np.prod(shape))
    return {"name": name, "shape": shape, "datatype": datatype, "data": [1.0] * count}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"inputs": [_x([2, 3])]}, ["'X'", "shape [2, 3]", "[-1, 4]"]),
        ({"inputs": [_x([2, 4], "FP64")]}, ["'X'", "FP32", "FP64"]),
        ({"inputs": [_x([2, 4], name="Y")]}, ["no input 'Y'"]),
        ({"inputs": [_x([2, 4])], "outputs": [{"name": "nope"}]}, ["no output 'nope'"]),
        (
            {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1] * 7}]},
            ["'X'", "8 elements", "7"],
        ),
        (
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4}]},
            ["'X'", "numbers"],
        ),
        (
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT8", "data": [300] * 4}]},
            ["'X'", "-128..127"],
        ),
        (
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "BF17", "data": [1] * 4}]},
            ["'BF17'"],
        ),
        (
            {"inputs": [{"name": "X", "shape": [10**9, 10**9], "datatype": "FP32", "data": [1]}]},
            ["'X'", "elements"],
        ),
        ({"inputs": []}, ["inputs"]),
        ({"inputs": [_x([1, 4])], "surprise": 1}, ["surprise"]),
    ],
)
def test_bad_requests_get_v2_errors_naming_the_tensor(
    srv: CorralServer, body: object, words: list[str]
) -> None:
    reply = _post(srv, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert isinstance(error, str)
    for word in words:
        assert word in error, error


def test_broken_bodies_and_binary_framing(srv: CorralServer) -> None:
    assert _post(srv, b"{not json").status_code == 400
    assert "error" in _post(srv, b"[1, 2]").json()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    raw = np.ones((1, 4), np.float32).tobytes()
    ok = _post(srv, header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200, ok.text
    for length, tail in (
        ("999999", raw),
        ("abc", raw),
        (str(len(header)), raw[:-3]),
        (str(len(header)), raw + b"xx"),
    ):
        reply = _post(srv, header + tail, headers={"Inference-Header-Content-Length": length})
        assert reply.status_code == 400, (length, reply.text)
        assert isinstance(reply.json()["error"], str)
    bad_gzip = _post(srv, b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"})
    assert bad_gzip.status_code == 400
    bomb = gzip.compress(b"{" + b" " * (80 << 20) + b"}")  # inflates past the body limit
    assert _post(srv, bomb, headers={"Content-Encoding": "gzip"}).status_code == 413
    words_header = json.dumps(
        {
            "inputs": [
                {
                    "name": "word",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 9},
                }
            ]
        }
    ).encode()
    cut = struct.pack("<I", 100) + b"short"  # a length that runs past the data
    reply = _post(
        srv,
        words_header + cut,
        "words",
        headers={"Inference-Header-Content-Length": str(len(words_header))},
    )
    assert reply.status_code == 400 and "BYTES" in reply.json()["error"]
    # After all that, the model still answers.
    assert _post(srv, {"inputs": [_x([1, 4])]}).status_code == 200


def test_wrong_kind_of_model_either_way(srv: CorralServer) -> None:
    reply = _post(srv, {"inputs": [_x([1, 4])]}, model="chatty")
    assert reply.status_code == 400 and "not a tensor model" in reply.json()["error"]
    chat = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": "iris", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert chat.status_code == 400 and "/v2/models/iris" in chat.text
    missing = httpx.get(srv.url + "/v2/models/nope", timeout=30)
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_io_binding_answers_as_a_plain_run(
    srv: CorralServer, models: dict[str, SklearnModel]
) -> None:
    """diabetes runs through onnxruntime's IO binding (io_binding: on); its answers are
    scikit-learn's, and the engine counts the bound calls."""
    model = models["diabetes"]
    x = model.x[:7]
    body = {
        "inputs": [{"name": "X", "shape": [7, 10], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    reply = _post(srv, body, model="diabetes")
    assert reply.status_code == 200, reply.text
    got = reply.json()["outputs"][0]["data"]
    np.testing.assert_allclose(got, model.estimator.predict(x), rtol=1e-5, atol=1e-3)
    text = httpx.get(f"{srv.url}/metrics").text
    found = re.search(r'corral_engine_infer_bound_calls\{model="diabetes:1"\} ([0-9.e+]+)', text)
    assert found and float(found.group(1)) >= 1, text[-1500:]


def _calls(srv: CorralServer, model: str) -> tuple[float, float]:
    text = httpx.get(srv.url + "/metrics", timeout=30).text

    def figure(name: str) -> float:
        found = re.search(rf'corral_engine_{name}{{model="{model}"}} ([0-9.e+]+)', text)
        assert found, text[-2000:]
        return float(found.group(1))

    return figure("infer_calls"), figure("infer_requests")


def test_concurrent_requests_are_stacked_into_shared_calls(
    srv: CorralServer, models: dict[str, SklearnModel]
) -> None:
    """32 clients at once (aiohttp: tritonclient's gevent pool sends too slowly here to
    keep 32 in flight), each sending one row: the engine's calls take several each."""
    model = models["digits"]
    rows = [model.x[i : i + 1] for i in range(256)]
    assert _post(srv, {"inputs": [_x([1, 64])]}, model="digits").status_code == 200  # loaded
    before_calls, before_requests = _calls(srv, "digits:1")

    async def send_all() -> list[int]:
        labels: dict[int, int] = {}
        queue = list(range(len(rows)))
        async with aiohttp.ClientSession(srv.url) as session:

            async def client() -> None:
                while queue:
                    i = queue.pop()
                    body = {
                        "inputs": [
                            {
                                "name": "X",
                                "shape": [1, 64],
                                "datatype": "FP32",
                                "data": rows[i].ravel().tolist(),
                            }
                        ]
                    }
                    async with session.post("/v2/models/digits/infer", json=body) as reply:
                        assert reply.status == 200, await reply.text()
                        answer = await reply.json()
                    labels[i] = answer["outputs"][0]["data"][0]

            await asyncio.gather(*(client() for _ in range(32)))
        return [labels[i] for i in range(len(rows))]

    labels = asyncio.run(send_all())
    assert labels == model.estimator.predict(model.x[:256]).tolist()
    calls, requests = _calls(srv, "digits:1")
    assert requests - before_requests == 256
    assert calls - before_calls < 256 / 2, calls - before_calls  # most calls were shared


# --- gRPC ----------------------------------------------------------------------------


@pytest.fixture
def grpc_client(srv: CorralServer) -> object:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    return grpcclient.InferenceServerClient(f"127.0.0.1:{srv.env['CORRAL_GRPC_PORT']}")


def test_grpc_health_metadata_and_infer(
    grpc_client: object, models: dict[str, SklearnModel]
) -> None:
    import tritonclient.grpc as grpcclient

    client: grpcclient.InferenceServerClient = grpc_client  # type: ignore[assignment]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("iris", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "4"]}]
    model = models["iris"]
    x = model.x[::9]
    tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents
    result = client.infer("iris", [tensor], request_id="r7")
    assert result.get_response().id == "r7"
    assert result.as_numpy("output_label").tolist() == model.estimator.predict(x).tolist()
    np.testing.assert_allclose(
        result.as_numpy("output_probability"), model.estimator.predict_proba(x), atol=1e-5
    )
    only = client.infer(
        "iris",
        [tensor],
        outputs=[grpcclient.InferRequestedOutput("output_label")],
        model_version="2",
    )
    assert only.as_numpy("output_probability") is None
    assert only.as_numpy("output_label").tolist() == model.estimator.predict(x).tolist()


def test_grpc_bytes_both_ways(grpc_client: object, models: dict[str, SklearnModel]) -> None:
    import tritonclient.grpc as grpcclient

    client: grpcclient.InferenceServerClient = grpc_client  # type: ignore[assignment]
    words = np.array([b"otter", b"caf\xc3\xa9", b"x"], dtype=object)
    tensor = grpcclient.InferInput("word", [3], "BYTES")
    tensor.set_data_from_numpy(words)
    assert client.infer("words", [tensor]).as_numpy("id").tolist() == [2, 3, -1]
    model = models["iris-names"]
    x = model.x[::50]
    tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    labels = client.infer("iris-names", [tensor]).as_numpy("output_label")
    assert [v.decode() for v in labels] == model.estimator.predict(x).tolist()


def test_grpc_errors_are_status_codes_and_the_server_stays_up(grpc_client: object) -> None:
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client: grpcclient.InferenceServerClient = grpc_client  # type: ignore[assignment]

    def status_of(model: str, shape: list[int], datatype: str = "FP32") -> str:
        tensor = grpcclient.InferInput("X", shape, datatype)
        dtype = np.float64 if datatype == "FP64" else np.float32
        tensor.set_data_from_numpy(np.ones(shape, dtype))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [tensor])
        return f"{caught.value.status()} {caught.value.message()}"

    assert "INVALID_ARGUMENT" in status_of("iris", [2, 3]) and "[-1, 4]" in status_of(
        "iris", [2, 3]
    )
    assert "FP64" in status_of("iris", [1, 4], "FP64")
    assert "NOT_FOUND" in status_of("nope", [1, 4])
    assert "not a tensor model" in status_of("chatty", [1, 4])
    assert grpc.StatusCode.INVALID_ARGUMENT.name in status_of("iris", [1, 4, 1])
    tensor = grpcclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("iris", [tensor]).as_numpy("output_label").shape == (1,)


def test_grpc_and_rest_take_api_keys(tmp_path: Path, models: dict[str, SklearnModel]) -> None:
    """With keys: gRPC reads one from the call's metadata, REST from Authorization."""
    import subprocess
    import sys

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    home = tmp_path / "home"
    registry = Registry(home)
    registry.import_path(models["iris"].path, "iris")
    registry.import_path(models["digits"].path, "digits")
    registry.close()

    def key(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "corral", "keys", "create", *args],
            env={**os.environ, "CORRAL_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    secret = key("--name", "tensors", "--models", "iris")
    server = CorralServer(home, intra_op_threads=1, grpc_port=free_port()).start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.env['CORRAL_GRPC_PORT']}")
        tensor = grpcclient.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert client.is_server_live()  # liveness needs no key
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.infer("iris", [tensor])
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.infer("iris", [tensor], headers={"authorization": "Bearer wrong"})
        good = {"authorization": f"Bearer {secret}"}
        assert client.infer("iris", [tensor], headers=good).as_numpy("output_label").shape == (1,)
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):  # not its model
            client.infer("digits", [tensor], headers=good)
        url = f"{server.url}/v2/models/iris/infer"
        body = {"inputs": [_x([1, 4])]}
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        assert "error" in httpx.post(url, json=body, timeout=60).json()
        reply = httpx.post(url, json=body, timeout=60, headers=good)
        assert reply.status_code == 200, reply.text
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
    finally:
        server.stop()


def test_a_batch_of_v2_infer_lines(srv: CorralServer, models: dict[str, SklearnModel]) -> None:
    """The Batch API takes V2 infer lines (the model named by the URL): results are V2
    JSON answers equal to scikit-learn's; a bad line fails alone, in V2's error shape."""
    import openai

    from tests.support.batches import output_of, submit, wait_batch

    client = openai.OpenAI(base_url=srv.openai_url, api_key="unused")
    model = models["iris"]
    url = "/v2/models/iris/versions/2/infer"
    lines = [
        {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": url,
            "body": {
                "inputs": [
                    {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": model.x[i].tolist()}
                ]
            },
        }
        for i in range(0, 150, 10)
    ]
    lines.append({**lines[0], "custom_id": "bad", "body": {"inputs": [_x([1, 3])]}})
    batch = submit(client, lines, endpoint=url)
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.completed == 15 and done.request_counts.failed == 1
    by_id = {r["custom_id"]: r for r in output_of(client, done.output_file_id)}
    for i in range(0, 150, 10):
        answer = by_id[f"row-{i}"]["response"]["body"]
        label = next(o for o in answer["outputs"] if o["name"] == "output_label")
        assert label["data"] == [int(model.estimator.predict(model.x[i : i + 1])[0])]
    [bad] = output_of(client, done.error_file_id)
    assert bad["custom_id"] == "bad" and bad["response"]["status_code"] == 400
    assert "[-1, 4]" in bad["response"]["body"]["error"]


def test_batch_v2_lines_are_checked_at_upload(srv: CorralServer) -> None:
    import io

    import openai

    client = openai.OpenAI(base_url=srv.openai_url, api_key="unused")
    binary = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v2/models/iris/infer",
        "body": {"inputs": [_x([1, 4])], "parameters": {"binary_data_output": True}},
    }
    with pytest.raises(openai.BadRequestError, match="binary_data"):
        client.files.create(
            file=("in.jsonl", io.BytesIO(json.dumps(binary).encode() + b"\n")), purpose="batch"
        )
    wrong = {**binary, "url": "/v2/models/iris/ready", "body": {"inputs": []}}
    with pytest.raises(openai.BadRequestError, match="/v2/models/NAME/infer"):
        client.files.create(
            file=("in.jsonl", io.BytesIO(json.dumps(wrong).encode() + b"\n")), purpose="batch"
        )


def test_inspect_reads_the_graph_through_the_api(srv: CorralServer) -> None:
    facts = httpx.get(f"{srv.url}/admin/models/iris/inspect", timeout=60).json()
    assert facts["format"] == "onnx" and facts["producer"]["name"] == "skl2onnx"
    assert facts["opsets"]["ai.onnx.ml"] >= 1
    assert facts["parameters"] == 15  # 3 classes x 4 features, and 3 intercepts
    assert facts["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["?", 4]}]
    assert facts["operators"]["ai.onnx.ml.ZipMap"] == 1
    words = httpx.get(f"{srv.url}/admin/models/words/inspect", timeout=60).json()
    assert words["inputs"] == [{"name": "word", "datatype": "BYTES", "shape": ["N"]}]
    gguf = httpx.get(f"{srv.url}/admin/models/chatty/inspect", timeout=60).json()
    assert gguf["format"] == "gguf" and gguf["embedding"] is True and gguf["parameters"] > 0
    missing = httpx.get(f"{srv.url}/admin/models/nope/inspect", timeout=60)
    assert missing.status_code == 404


def test_corral_inspect_without_a_server(tmp_path: Path, models: dict[str, SklearnModel]) -> None:
    import subprocess
    import sys

    home = tmp_path / "home"
    registry = Registry(home)
    registry.import_path(models["digits"].path, "digits")
    registry.close()
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_PORT": str(free_port())}

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", "inspect", *args],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    as_json = corral("digits", "--json")
    assert as_json.returncode == 0, as_json.stderr
    facts = json.loads(as_json.stdout)
    assert facts["operators"]["ai.onnx.ml.TreeEnsembleClassifier"] == 1
    assert facts["parameters"] > 1000  # the trees' thresholds and leaf weights
    table = corral("digits")
    assert table.returncode == 0 and "TreeEnsembleClassifier" in table.stdout
    assert "skl2onnx" in table.stdout


@pytest.mark.parametrize("model", ["iris", "words", "diabetes"])
def test_schema_example_passes_the_schema_and_the_server(srv: CorralServer, model: str) -> None:
    import jsonschema

    reply = httpx.get(f"{srv.url}/admin/models/{model}/schema", timeout=60)
    assert reply.status_code == 200, reply.text
    schemas = reply.json()
    request_schema, response_schema = schemas["request"], schemas["response"]
    jsonschema.Draft202012Validator.check_schema(request_schema)
    jsonschema.validate(schemas["example"], request_schema)
    answer = _post(srv, schemas["example"], model=model)
    assert answer.status_code == 200, answer.text
    jsonschema.validate(answer.json(), response_schema)
    # And what the server refuses, the schema refuses too.
    for bad in (
        {"inputs": []},
        {"inputs": [{**schemas["example"]["inputs"][0], "name": "nope"}]},
        {"inputs": [{**schemas["example"]["inputs"][0], "datatype": "INT8"}]},
        {**schemas["example"], "outputs": [{"name": "nope"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, request_schema)
        assert _post(srv, bad, model=model).status_code == 400


def test_schema_of_a_model_that_is_not_a_tensor_model(srv: CorralServer) -> None:
    reply = httpx.get(f"{srv.url}/admin/models/chatty/schema", timeout=60)
    assert reply.status_code == 400 and "not a tensor model" in reply.text
