"""What an ONNX model is, read from its graph: ``python -m corral.engines.onnx.inspect PATH``.

Run as its own process by the gateway (``corral inspect``, ``/admin/models/{name}/
inspect``), which keeps the ``onnx`` package out of the gateway as it keeps every
engine library out. Prints one JSON object: the IR version and opsets, the producer,
inputs and outputs with their datatypes and shapes (symbolic dimensions by name), the
parameter count (the initializers' elements, and the learned numbers ONNX-ML
operators hold as attributes), an operator histogram and the model's
metadata properties. Nothing is run: the graph is only read.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

# ONNX element types and their V2 datatypes (strings are BYTES).
DATATYPES = {
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.STRING: "BYTES",
}


def inspect_model(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    parameters = sum(_elements(init.dims) for init in graph.initializer)
    for node in graph.node:  # ONNX-ML operators keep learned numbers as attributes
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.FLOATS:
                parameters += len(attr.floats)
            elif attr.type == onnx.AttributeProto.TENSOR:
                parameters += _elements(attr.t.dims)
    operators = Counter(
        f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        for node in graph.node
    )
    return {
        "format": "onnx",
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "graph": graph.name,
        "inputs": [_tensor(v) for v in graph.input if v.name not in initializers],
        "outputs": [_tensor(v) for v in graph.output],
        "parameters": parameters,
        "size": path.stat().st_size,
        "operators": dict(operators.most_common()),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _elements(dims: Any) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count


def _tensor(value: Any) -> dict[str, Any]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":  # a sequence or a map (scikit-learn's ZipMap)
        return {"name": value.name, "datatype": kind, "shape": None, "type": _type_name(value.type)}
    tensor = value.type.tensor_type
    shape: list[int | str] | None = None
    if tensor.HasField("shape"):
        shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor.shape.dim
        ]
    datatype = DATATYPES.get(tensor.elem_type, TensorProto.DataType.Name(tensor.elem_type))
    return {"name": value.name, "datatype": datatype, "shape": shape}


def _type_name(proto: Any) -> str:
    kind = proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({TensorProto.DataType.Name(proto.tensor_type.elem_type).lower()})"
    if kind == "sequence_type":
        return f"seq({_type_name(proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = TensorProto.DataType.Name(proto.map_type.key_type).lower()
        return f"map({key},{_type_name(proto.map_type.value_type)})"
    return str(kind)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m corral.engines.onnx.inspect PATH", file=sys.stderr)
        return 2
    try:
        facts = inspect_model(Path(argv[0]))
    except Exception as exc:  # a file onnx cannot parse: say so, as the one line
        print(f"cannot read {argv[0]} as ONNX: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
