"""The Open Inference Protocol's tensor codec: JSON and binary tensors both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corral.errors import InvalidRequest
from corral.protocol import tensors, v2


def test_nested_and_flat_json_data_give_the_same_tensor() -> None:
    flat = tensors.from_json([1, 2, 3, 4, 5, 6], "INT32", [2, 3], "x")
    nested = tensors.from_json([[1, 2, 3], [4, 5, 6]], "INT32", [2, 3], "x")
    assert flat.dtype == np.int32 and flat.shape == (2, 3)
    assert np.array_equal(flat, nested)


@pytest.mark.parametrize(
    ("data", "datatype", "word"),
    [
        ([1.5, 2.0], "INT64", "integers"),
        ([True, 1], "BOOL", "true/false"),
        ([1, 2], "BOOL", "true/false"),
        (["a", "b"], "FP32", "numbers"),
        ([1, 70000], "UINT16", "0..65535"),
        ([1, 2], "BYTES", "strings"),
    ],
)
def test_json_data_of_the_wrong_kind_is_refused(
    data: list[object], datatype: str, word: str
) -> None:
    with pytest.raises(InvalidRequest, match=word):
        tensors.from_json(data, datatype, [2], "x")


def test_every_numeric_datatype_round_trips_through_binary() -> None:
    for name, dtype in tensors.DTYPES.items():
        if name == "BYTES":
            continue
        array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
        raw = tensors.to_raw(array)
        assert len(raw) == 6 * dtype.itemsize
        back = tensors.from_raw(raw, name, [2, 3], "x")
        assert back.dtype == dtype and np.array_equal(back, array)
        assert tensors.datatype_of(back) == name


def test_bytes_round_trip_with_their_length_prefixes() -> None:
    items = np.array([b"", b"otter", "caf\u00e9".encode(), b"\x00\xff"], dtype=object)
    raw = tensors.to_raw(items)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == (5).to_bytes(4, "little")
    assert tensors.from_raw(raw, "BYTES", [4], "x").tolist() == items.tolist()
    with pytest.raises(InvalidRequest, match="runs past"):
        tensors.split_bytes(raw[:-1], "x")


def test_a_request_with_binary_inputs_and_binary_outputs_asked() -> None:
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "a",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                },
                {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        }
    ).encode()
    body = header + np.array([1.5, 2.5], np.float32).tobytes()
    decoded = tensors.decode_request(body, str(len(header)))
    assert decoded.request.id == "r1"
    assert decoded.inputs["a"].tolist() == [1.5, 2.5]
    assert decoded.inputs["b"].tolist() == [b"hi"]
    assert decoded.outputs == ["y", "z"] and decoded.binary_outputs == frozenset({"y"})


def test_a_response_mixes_json_and_binary_outputs() -> None:
    outputs = {
        "y": np.array([[1.0, 2.0]], np.float32),
        "z": np.array([b"ok", b"\xff"], dtype=object),  # not UTF-8: binary whatever was asked
        "w": np.array([3], np.int64),
    }
    body, length = tensors.encode_response("m", "2", "r1", outputs, frozenset({"y"}))
    assert length is not None
    head, tail = tensors.decode_response(body, str(length))
    by_name = {o["name"]: o for o in head["outputs"]}
    assert head["model_name"] == "m" and head["model_version"] == "2" and head["id"] == "r1"
    assert by_name["w"]["data"] == [3] and "parameters" not in by_name["w"]
    assert by_name["y"]["parameters"]["binary_data_size"] == 8
    assert tail[:8] == np.array([1.0, 2.0], np.float32).tobytes()
    assert tensors.split_bytes(tail[8:], "z") == [b"ok", b"\xff"]


def test_json_only_responses_have_no_header_length() -> None:
    body, length = tensors.encode_response("m", None, None, {"y": np.zeros(2, np.float32)}, False)
    assert length is None and json.loads(body)["outputs"][0]["data"] == [0.0, 0.0]


def test_tensor_specs_say_which_dimensions_are_free() -> None:
    spec = v2.TensorSpec("x", "FP32", ("N", 4))
    assert spec.wire_shape == [-1, 4] and spec.batched
    assert not v2.TensorSpec("x", "FP32", (1, 4)).batched
    assert not v2.TensorSpec("x", "FP32", ()).batched
