"""Models exported from PyTorch and Hugging Face transformers, served by the onnx engine.

Both PyTorch exporters (torch.export-based, the default since 2.9, and TorchScript,
which most published exports came from) and a transformers BERT exported the way
optimum exports encoders (``input_ids``/``attention_mask`` in, ``last_hidden_state``
out, batch and sequence free). Answers are checked against the torch modules
themselves, through ``tritonclient.http``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")
httpclient = pytest.importorskip("tritonclient.http")

from corral.registry.store import Registry  # noqa: E402
from tests.support.onnx_models import TorchExport, hf_bert, torch_mlp  # noqa: E402
from tests.support.server import CorralServer  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TorchExport]:
    directory = tmp_path_factory.mktemp("exports")
    with warnings.catch_warnings():  # the exporters' own deprecations and tracer notes
        warnings.simplefilter("ignore")
        return {
            "mlp-dynamo": torch_mlp(directory, dynamo=True),
            "mlp-torchscript": torch_mlp(directory, dynamo=False),
            "bert": hf_bert(directory),
        }


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, exports: dict[str, TorchExport]
) -> Iterator[CorralServer]:
    home = tmp_path_factory.mktemp("exports-home")
    registry = Registry(home)
    for name, export in exports.items():
        params = {"max_queue_delay_ms": 20} if name == "bert" else None
        registry.import_path(export.path, name, params=params)
    registry.close()
    server = CorralServer(home, intra_op_threads=1).start()
    yield server
    server.stop()


@pytest.fixture
def client(srv: CorralServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=120)


def _input(name: str, array: np.ndarray, datatype: str) -> object:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


@pytest.mark.parametrize("name", ["mlp-dynamo", "mlp-torchscript"])
def test_pytorch_exports_answer_as_torch(
    client: httpclient.InferenceServerClient, exports: dict[str, TorchExport], name: str
) -> None:
    meta = client.get_model_metadata(name)
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 6]}]
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    result = client.infer(name, [_input("features", x, "FP32")])
    with torch.no_grad():
        expected = exports[name].module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.as_numpy("scores"), expected, atol=1e-5)


def _bert_inputs(
    rng: np.random.Generator, batch: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(1, 100, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, length // 2 :] = 0  # the first row padded, as a tokenizer pads a batch
    return ids, mask


def test_a_transformers_encoder_with_free_batch_and_sequence(
    srv: CorralServer, exports: dict[str, TorchExport]
) -> None:
    """Concurrent requests of different lengths: each answered as torch answers it
    (requests of equal shape may share a call; others never do)."""
    address = srv.url.removeprefix("http://")
    meta = httpclient.InferenceServerClient(address).get_model_metadata("bert")
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert meta["outputs"][0]["shape"] == [-1, -1, 32]
    rng = np.random.default_rng(2)
    cases = [_bert_inputs(rng, batch, length) for batch, length in [(2, 5), (1, 11), (3, 5)] * 3]

    def ask(case: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        ids, mask = case
        client = httpclient.InferenceServerClient(address, network_timeout=120)
        result = client.infer(
            "bert", [_input("input_ids", ids, "INT64"), _input("attention_mask", mask, "INT64")]
        )
        return result.as_numpy("last_hidden_state")

    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(ask, cases))
    module = exports["bert"].module
    for (ids, mask), answer in zip(cases, answers, strict=True):
        with torch.no_grad():
            expected = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert answer.shape == expected.shape
        np.testing.assert_allclose(answer, expected, atol=1e-4)


def test_inspect_names_the_symbolic_dimensions(srv: CorralServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corral", "inspect", "bert", "--json"],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    shapes = {t["name"]: t["shape"] for t in facts["inputs"]}
    assert shapes["input_ids"] == ["batch_size", "sequence_length"]
    assert facts["producer"]["name"] == "pytorch" and facts["parameters"] > 0
