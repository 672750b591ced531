"""JSON Schemas of one model's V2 infer request and response, and an example request.

``corral schema MODEL`` and ``/admin/models/{name}/schema``: what a client must send
to this model and what it gets back, from the model's own tensors (its V2 metadata),
so a client can validate a request before sending it. The example request passes the
request schema and the server (zeros; a free dimension is 1).
"""

from __future__ import annotations

from typing import Any

from corral.protocol.v2 import ModelMetadata, TensorMetadata

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_JSON_TYPES = {"BOOL": {"type": "boolean"}, "BYTES": {"type": "string"}}
_FLOATS = ("FP16", "FP32", "FP64", "BF16")


def _element(datatype: str) -> dict[str, Any]:
    if datatype in _JSON_TYPES:
        return _JSON_TYPES[datatype]
    return {"type": "number"} if datatype in _FLOATS else {"type": "integer"}


def _shape(tensor: TensorMetadata) -> dict[str, Any]:
    dims = [{"const": d} if d >= 0 else {"type": "integer", "minimum": 0} for d in tensor.shape]
    return {
        "type": "array",
        "prefixItems": dims,
        "items": False,
        "minItems": len(dims),
    }


def _data(tensor: TensorMetadata) -> dict[str, Any]:
    """Flat or nested, row-major: any depth of arrays of the element type."""
    return {"$ref": f"#/$defs/data_{tensor.datatype}"}


def _tensor_schema(tensor: TensorMetadata, with_data: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": {"const": tensor.name},
        "datatype": {"const": tensor.datatype},
        "shape": _shape(tensor),
        "parameters": {"type": "object"},
    }
    if with_data:
        properties["data"] = _data(tensor)
    return {
        "type": "object",
        "properties": properties,
        "required": ["name", "datatype", "shape"],
        "additionalProperties": False,
    }


def _data_defs(tensors: list[TensorMetadata]) -> dict[str, Any]:
    defs = {}
    for datatype in sorted({t.datatype for t in tensors}):
        element = _element(datatype)
        defs[f"data_{datatype}"] = {
            "type": "array",
            "items": {"anyOf": [element, {"$ref": f"#/$defs/data_{datatype}"}]},
        }
    return defs


def request_schema(meta: ModelMetadata) -> dict[str, Any]:
    every = [_tensor_schema(t, with_data=True) for t in meta.inputs]
    return {
        "$schema": DRAFT,
        "title": f"V2 infer request for {meta.name}",
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "items": {"oneOf": every},
                "minItems": len(every),
                "maxItems": len(every),
                "allOf": [
                    {"contains": {"properties": {"name": {"const": t.name}}}} for t in meta.inputs
                ],
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"enum": [t.name for t in meta.outputs]},
                        "parameters": {"type": "object"},
                    },
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["inputs"],
        "additionalProperties": False,
        "$defs": _data_defs(meta.inputs),
    }


def response_schema(meta: ModelMetadata) -> dict[str, Any]:
    outputs = [_tensor_schema(t, with_data=True) for t in meta.outputs]
    return {
        "$schema": DRAFT,
        "title": f"V2 infer response of {meta.name}",
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": {"oneOf": outputs}},
        },
        "required": ["model_name", "outputs"],
        "$defs": _data_defs(meta.outputs),
    }


def example_request(meta: ModelMetadata) -> dict[str, Any]:
    inputs = []
    for t in meta.inputs:
        shape = [d if d >= 0 else 1 for d in t.shape]
        count = 1
        for d in shape:
            count *= d
        zero: Any = {"BOOL": False, "BYTES": ""}.get(
            t.datatype, 0.0 if t.datatype in _FLOATS else 0
        )
        inputs.append(
            {"name": t.name, "shape": shape, "datatype": t.datatype, "data": [zero] * count}
        )
    return {"inputs": inputs}


def schemas(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "model": meta.name,
        "request": request_schema(meta),
        "response": response_schema(meta),
        "example": example_request(meta),
    }
