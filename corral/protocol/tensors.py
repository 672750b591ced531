"""Tensors of the Open Inference Protocol as numpy arrays: JSON and binary, both ways.

The gateway relays request bodies to the worker as they came; the worker decodes and
checks them here against its model's tensors (``TensorSpec``). So every refusal (a
wrong shape, a wrong datatype, a missing input, an unknown output) is a 400 naming
the tensor, made before the engine sees anything.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corral.errors import InvalidRequest
from corral.protocol.parse import parse_json_object, validate
from corral.protocol.v2 import HEADER_LENGTH, InferRequest, InferResponse, ResponseOutput

# A BYTES element in binary form: its length (4 bytes, little-endian), then the bytes.
_LENGTH = struct.Struct("<I")

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype: name for name, dtype in DTYPES.items() if name != "BYTES"}


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The V2 datatype of an array (strings and bytes: BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return _BY_DTYPE[array.dtype]
    except KeyError:
        raise InvalidRequest(f"The model produced {array.dtype}, which V2 cannot carry.") from None


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedRequest:
    request: InferRequest
    inputs: dict[str, np.ndarray[Any, Any]]
    # The outputs asked for by name (None: all), and which of them go back as binary.
    outputs: list[str] | None
    binary_outputs: frozenset[str] | bool


def decode_request(body: bytes, header_length: str | None) -> DecodedRequest:
    """A V2 infer body (JSON, or JSON then binary tensors) as arrays by input name."""
    json_part, binary = _split(body, header_length)
    request = validate(parse_json_object(json_part), InferRequest)
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in inputs:
            raise InvalidRequest(f"Input '{tensor.name}' is given twice.", param="inputs")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequest(
                    f"Input '{tensor.name}': binary_data_size must be a byte count.",
                    param="inputs",
                )
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"Input '{tensor.name}' says {size} bytes of binary data, but the body "
                    f"has {len(binary) - offset} left after the JSON header.",
                    param="inputs",
                )
            if tensor.data is not None:
                raise InvalidRequest(
                    f"Input '{tensor.name}' has both data and binary_data_size.", param="inputs"
                )
            raw = binary[offset : offset + size]
            offset += size
            inputs[tensor.name] = from_raw(raw, tensor.datatype, tensor.shape, tensor.name)
        else:
            inputs[tensor.name] = from_json(tensor.data, tensor.datatype, tensor.shape, tensor.name)
    if offset != len(binary):
        raise InvalidRequest(
            f"The body has {len(binary) - offset} bytes after the JSON header that no input's "
            "binary_data_size accounts for."
        )
    outputs, binary_outputs = _requested_outputs(request)
    return DecodedRequest(request, inputs, outputs, binary_outputs)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} bytes; it must "
            "be the byte length of the JSON that begins the body."
        )
    return body[:length], body[length:]


def _requested_outputs(request: InferRequest) -> tuple[list[str] | None, frozenset[str] | bool]:
    every = bool((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is None:
        return None, every
    names: list[str] = []
    binary: set[str] = set()
    for out in request.outputs:
        if out.name in names:
            raise InvalidRequest(f"Output '{out.name}' is asked for twice.", param="outputs")
        names.append(out.name)
        if (out.parameters or {}).get("binary_data", every):
            binary.add(out.name)
    return names, frozenset(binary)


def _element_count(shape: Sequence[int], name: str) -> int:
    if any(d < 0 for d in shape):
        raise InvalidRequest(
            f"Input '{name}' has shape {list(shape)}; a request's dimensions are sizes (>= 0).",
            param="inputs",
        )
    count = 1
    for d in shape:
        count *= d
    return count


def _check_datatype(datatype: str, name: str) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        known = ", ".join(DTYPES)
        raise InvalidRequest(
            f"Input '{name}' has datatype {datatype!r}; this server takes {known}.",
            param="inputs",
        ) from None


def from_json(data: Any, datatype: str, shape: Sequence[int], name: str) -> np.ndarray[Any, Any]:
    """A tensor from JSON ``data`` (flat or nested, row-major)."""
    dtype = _check_datatype(datatype, name)
    count = _element_count(shape, name)
    if not isinstance(data, list):
        raise InvalidRequest(
            f"Input '{name}' has no data: give 'data' as a list, or the binary tensor "
            "extension's binary_data_size.",
            param="inputs",
        )
    flat = flatten(data)
    if len(flat) != count:
        raise InvalidRequest(
            f"Input '{name}' has shape {list(shape)}, which holds {count} elements, but its "
            f"data has {len(flat)}.",
            param="inputs",
        )
    if datatype == "BYTES":
        return _bytes_array(flat, name).reshape(shape)
    values = np.asarray(flat) if flat else np.empty(0, dtype)
    _check_values(values, datatype, dtype, name)
    return values.astype(dtype, copy=False).reshape(shape)


def flatten(data: list[Any]) -> list[Any]:
    """Nested lists' values in row-major order (iteratively: any depth)."""
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _bytes_array(flat: list[Any], name: str) -> np.ndarray[Any, Any]:
    out = np.empty(len(flat), dtype=object)
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidRequest(
                f"Input '{name}' is BYTES; its data must be strings, and element {i} is "
                f"{type(item).__name__}.",
                param="inputs",
            )
        out[i] = item.encode()
    return out


def _check_values(
    values: np.ndarray[Any, Any], datatype: str, dtype: np.dtype[Any], name: str
) -> None:
    kind = values.dtype.kind
    if values.size == 0:
        return
    if datatype == "BOOL":
        ok = kind == "b"
    elif dtype.kind in "iu":
        ok = kind in "iu"
        if ok:
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                raise InvalidRequest(
                    f"Input '{name}' is {datatype}, and its data holds values outside "
                    f"{info.min}..{info.max}.",
                    param="inputs",
                )
    else:
        ok = kind in "iuf"
    if not ok:
        wanted = {"BOOL": "true/false"}.get(
            datatype, "integers" if dtype.kind in "iu" else "numbers"
        )
        raise InvalidRequest(
            f"Input '{name}' is {datatype}, so its data must be {wanted}; it holds "
            f"{_kind_name(kind)}.",
            param="inputs",
        )


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "f": "non-integers", "U": "strings", "O": "mixed values"}.get(
        kind, "other values"
    )


def from_raw(raw: bytes, datatype: str, shape: Sequence[int], name: str) -> np.ndarray[Any, Any]:
    """A tensor from the binary extension's bytes (row-major; BYTES length-prefixed)."""
    dtype = _check_datatype(datatype, name)
    count = _element_count(shape, name)
    if datatype == "BYTES":
        items = split_bytes(raw, name)
        if len(items) != count:
            raise InvalidRequest(
                f"Input '{name}' has shape {list(shape)} ({count} elements), but its binary "
                f"data holds {len(items)} strings.",
                param="inputs",
            )
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidRequest(
            f"Input '{name}' has shape {list(shape)}, which is {count * dtype.itemsize} bytes "
            f"of {datatype}, but its binary data is {len(raw)} bytes.",
            param="inputs",
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES elements from their binary form: each a 4-byte length, then its bytes."""
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidRequest(f"Input '{name}': its BYTES data ends inside a length.")
        (size,) = _LENGTH.unpack_from(raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidRequest(f"Input '{name}': a BYTES element runs past the data.")
        items.append(raw[at : at + size])
        at += size
    return items


def to_raw(array: np.ndarray[Any, Any]) -> bytes:
    """A tensor's binary form (row-major, little-endian; BYTES length-prefixed)."""
    if datatype_of(array) == "BYTES":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# --- responses ------------------------------------------------------------------------


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    binary: frozenset[str] | bool,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    tensors: list[ResponseOutput] = []
    raws: list[bytes] = []
    for name, array in outputs.items():
        datatype = datatype_of(array)
        as_binary = binary if isinstance(binary, bool) else name in binary
        data = None if as_binary else _json_data(array, datatype)
        if data is None:  # asked for, or BYTES that are not text
            raw = to_raw(array)
            raws.append(raw)
            params: dict[str, Any] | None = {"binary_data_size": len(raw)}
        else:
            params = None
        tensors.append(
            ResponseOutput(
                name=name, shape=list(array.shape), datatype=datatype, parameters=params, data=data
            )
        )
    response = InferResponse(
        model_name=model_name, model_version=model_version, id=request_id, outputs=tensors
    )
    header = response.model_dump_json(exclude_none=True).encode()
    if not raws:
        return header, None
    return header + b"".join(raws), len(header)


def _json_data(array: np.ndarray[Any, Any], datatype: str) -> list[Any] | None:
    flat = array.ravel()
    if datatype != "BYTES":
        return flat.tolist()
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    except UnicodeDecodeError:
        return None


def decode_response(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """A worker's response: its JSON, and the binary tensors after it."""
    json_part, binary = _split(body, header_length)
    return json.loads(json_part), binary


# --- the client's side (corral bench, corral predict) -----------------------------------


def encode_request(
    inputs: Mapping[str, np.ndarray[Any, Any]], *, binary_outputs: bool = True
) -> tuple[bytes, int]:
    """An infer body with every input as binary tensor data, and its JSON header's
    length (``Inference-Header-Content-Length``): what ``tritonclient`` sends in binary
    mode, and the cheapest body for the server to read."""
    header: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for name, array in inputs.items():
        raw = to_raw(array)
        raws.append(raw)
        header.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    body: dict[str, Any] = {"inputs": header}
    if binary_outputs:
        body["parameters"] = {"binary_data_output": True}
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return encoded + b"".join(raws), len(encoded)


def decode_outputs(body: bytes, header_length: str | None) -> dict[str, np.ndarray[Any, Any]]:
    """An infer response's outputs as arrays, by name (JSON or binary, as sent)."""
    response, binary = decode_response(body, header_length)
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for tensor in response.get("outputs", []):
        name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[name] = from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        else:
            outputs[name] = from_json(tensor.get("data"), datatype, shape, name)
    return outputs


def random_inputs(
    inputs: list[Mapping[str, Any]], batch_size: int, seed: int = 0
) -> dict[str, np.ndarray[Any, Any]]:
    """Random inputs of ``batch_size`` rows for a model's V2 input metadata: normal
    floats, small integers, booleans, short strings; a free dimension other than the
    first is 1. Raises ValueError when the model's first dimension is fixed to another
    size."""
    rng = np.random.default_rng(seed)
    made: dict[str, np.ndarray[Any, Any]] = {}
    for spec in inputs:
        dims = [int(d) for d in spec["shape"]]
        if dims and dims[0] >= 0 and dims[0] != batch_size:
            raise ValueError(f"input {spec['name']} takes exactly {dims[0]} rows")
        shape = [batch_size, *(d if d >= 0 else 1 for d in dims[1:])] if dims else []
        made[spec["name"]] = _random(rng, spec["datatype"], shape)
    return made


def _random(rng: np.random.Generator, datatype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        words = np.array([b"corral", b"bench", b"row"], dtype=object)
        return words[rng.integers(0, len(words), size=shape)]
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    dtype = DTYPES[datatype]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 8, size=shape).astype(dtype)
