"""The worker's Open Inference Protocol (V2) endpoints, for tensor models.

The gateway relays a client's V2 body here unchanged, binary tensors included (the
``Inference-Header-Content-Length`` header with it). The body is decoded and checked
against the model's own tensors before the engine sees it, so a wrong name, shape or
datatype is a 400 naming the tensor; errors go back in the worker's one error shape
(OpenAI's), which the gateway renders in V2's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from corral.engines.base import Engine, TensorModel
from corral.errors import InvalidRequest, UnsupportedCapability
from corral.httputil import json_response, run_until_disconnect
from corral.protocol import tensors, v2
from corral.worker import handoff


class TensorService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _model(self) -> TensorModel:
        if self.engine.tensor_model is None:
            raise UnsupportedCapability("This model does not take tensors.", param="model")
        return self.engine.tensor_model

    async def metadata(self, request: Request) -> Response:
        model = self._model()
        body = v2.ModelMetadata(
            name=request.path_params["name"],
            platform=model.platform,
            inputs=v2.metadata_of(model.inputs),
            outputs=v2.metadata_of(model.outputs),
        )
        return json_response(body.model_dump())

    async def infer(self, request: Request) -> Response:
        model = self._model()
        decoded = tensors.decode_request(
            await request.body(), request.headers.get(v2.HEADER_LENGTH)
        )
        check_inputs(model.inputs, decoded.inputs)
        outputs = check_outputs(model.outputs, decoded.outputs)
        results = await run_until_disconnect(request, self.engine.infer(decoded.inputs, outputs))
        body, header_length = tensors.encode_response(
            request.path_params["name"],
            request.path_params.get("version"),
            decoded.request.id,
            results,
            decoded.binary_outputs,
        )
        if header_length is None:
            handoff.finished(request, body.decode)
            return Response(body, media_type="application/json")
        # The spool keeps JSON lines: made only for a batch request, not on every answer.
        handoff.finished(request, lambda: _as_json(body, header_length))
        return Response(
            body,
            media_type="application/octet-stream",
            headers={v2.HEADER_LENGTH: str(header_length)},
        )


def check_inputs(specs: Sequence[v2.TensorSpec], given: Mapping[str, np.ndarray[Any, Any]]) -> None:
    """Every input the model has, with its datatype and a shape its dimensions allow."""
    by_name = {s.name: s for s in specs}
    for name in given:
        if name not in by_name:
            raise InvalidRequest(
                f"The model has no input '{name}'; its inputs are {_names(specs)}.",
                param="inputs",
            )
    for spec in specs:
        array = given.get(spec.name)
        if array is None:
            raise InvalidRequest(
                f"Input '{spec.name}' is missing; the model takes {_names(specs)}.",
                param="inputs",
            )
        datatype = tensors.datatype_of(array)
        if datatype != spec.datatype:
            raise InvalidRequest(
                f"Input '{spec.name}' is {spec.datatype}, not {datatype}.", param="inputs"
            )
        fits = len(array.shape) == len(spec.shape) and all(
            not isinstance(want, int) or want < 0 or want == got
            for want, got in zip(spec.shape, array.shape, strict=True)
        )
        if not fits:
            raise InvalidRequest(
                f"Input '{spec.name}' has shape {list(array.shape)}; the model takes "
                f"{spec.wire_shape} (-1: any size).",
                param="inputs",
            )


def check_outputs(specs: Sequence[v2.TensorSpec], asked: list[str] | None) -> list[str]:
    known = [s.name for s in specs]
    if asked is None:
        return known
    for name in asked:
        if name not in known:
            raise InvalidRequest(
                f"The model has no output '{name}'; its outputs are {_names(specs)}.",
                param="outputs",
            )
    return asked


def _names(specs: Sequence[v2.TensorSpec]) -> str:
    return ", ".join(f"'{s.name}'" for s in specs)


def _as_json(body: bytes, header_length: int) -> str:
    """A binary response as one JSON document (the batch spool keeps JSON lines):
    each binary tensor's data put back as JSON."""
    head, raws = tensors.decode_response(body, str(header_length))
    offset = 0
    for out in head["outputs"]:
        size = (out.get("parameters") or {}).pop("binary_data_size", None)
        if size is None:
            continue
        raw = raws[offset : offset + size]
        offset += size
        array = tensors.from_raw(raw, out["datatype"], out["shape"], out["name"])
        out["data"] = (
            [x.decode("utf-8", "replace") for x in array.ravel()]
            if out["datatype"] == "BYTES"
            else array.ravel().tolist()
        )
        if not out["parameters"]:
            del out["parameters"]
    return json.dumps(head)
