"""The Open Inference Protocol (KServe V2) over gRPC, on its own port.

Off unless ``CORRAL_GRPC_PORT`` is set (needs ``pip install 'corral[grpc]'``). Served
by grpcio's asyncio server in the gateway's own event loop, beside the HTTP server:
the same registry, scheduler, keys and limits, and the same path to the workers as
V2 over REST (``api.v2``).

A ``ModelInfer`` is turned into the REST form the worker takes: one JSON header and
every input's bytes after it (Triton's binary tensor extension), so
``raw_input_contents`` reach the worker as they came, never as JSON. Typed
``contents`` go as JSON data, BYTES as their binary form. The worker is asked for
every output in binary, which become ``raw_output_contents``. No numpy is needed
here, so the gateway stays free of array libraries.

API keys come in the call's metadata, as gRPC clients send them: ``authorization:
Bearer <key>`` (or ``x-api-key``), checked as HTTP's are (``auth.key_holder``).
Errors are gRPC status codes with the message the REST API would give.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import grpc

from corral import __version__
from corral.api import v2 as rest
from corral.api.auth import key_holder, key_in
from corral.api.services import Services
from corral.errors import CorralError, InvalidRequest
from corral.protocol import v2
from corral.protocol.grpc import predict_v2_pb2 as pb
from corral.protocol.grpc import predict_v2_pb2_grpc as pb_grpc
from corral.service.inference import Caller

log = logging.getLogger("corral.grpc")
T = TypeVar("T")

# Each V2 datatype's field in InferTensorContents.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, services: Services) -> None:
        self.services = services

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name="corral", version=__version__, extensions=rest.EXTENSIONS
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def ready() -> Any:
            self._caller(context)
            try:
                rest.resolve(self.services, request.name, request.version or None)
            except CorralError as exc:
                if exc.status == 404:
                    return pb.ModelReadyResponse(ready=False)
                raise
            return pb.ModelReadyResponse(ready=True)

        return await _answer(context, ready())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def metadata() -> Any:
            meta = await rest.metadata(
                self.services, self._caller(context), request.name, request.version or None
            )
            return pb.ModelMetadataResponse(
                name=meta.name,
                versions=meta.versions,
                platform=meta.platform,
                inputs=[_tensor_metadata(t) for t in meta.inputs],
                outputs=[_tensor_metadata(t) for t in meta.outputs],
            )

        return await _answer(context, metadata())

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def infer() -> Any:
            caller = self._caller(context)
            name, version = request.model_name, request.model_version or None
            record = rest.resolve(self.services, name, version)
            body, length = rest_body(request)
            answer = await rest.ask_worker(
                self.services,
                caller,
                record,
                name,
                version,
                "/infer",
                body,
                {v2.HEADER_LENGTH: str(length)},
            )
            return grpc_response(answer)

        return await _answer(context, infer())

    def _caller(self, context: Any) -> Caller:
        """Who is calling, by the key in the call's metadata (when keys exist)."""
        metadata = {str(k).lower(): str(v) for k, v in (context.invocation_metadata() or ())}
        principal = key_holder(self.services.keys, key_in(metadata))
        key = principal.key_id if principal is not None else str(context.peer() or "grpc")
        return Caller(key=key, principal=principal)


async def _answer(context: Any, work: Awaitable[T]) -> T:
    """``work``'s result, or its CorralError as the gRPC status it maps to."""
    try:
        return await work
    except CorralError as exc:
        await _abort(context, exc)
    except Exception:
        log.exception("gRPC call failed")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
    raise AssertionError("unreachable")  # abort raises


async def _abort(context: Any, error: CorralError) -> NoReturn:
    code = _STATUS.get(error.status, grpc.StatusCode.INTERNAL)
    if error.status >= 500 and error.status != 503:
        log.error("gRPC call failed: %s", error.message)
    await context.abort(code, error.message)
    raise AssertionError("unreachable")


def _tensor_metadata(tensor: v2.TensorMetadata) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
    )


def _parameters(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def rest_body(request: Any) -> tuple[bytes, int]:
    """A ModelInferRequest as the worker's REST body: the JSON header (its length is
    the second value), then each input's bytes."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "it needs one per input, in order."
        )
    inputs: list[dict[str, Any]] = []
    tails: list[bytes] = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
        }
        params = _parameters(tensor.parameters)
        field = CONTENTS_FIELD.get(tensor.datatype)
        if raw:
            data = raw[i]
        elif tensor.datatype == "BYTES":
            data = _bytes_form(tensor.contents.bytes_contents)
        elif field is not None:
            data = None
            entry["data"] = list(getattr(tensor.contents, field))
        else:  # FP16 and the like: raw only, which the worker says if missing
            data = b""
        if data is not None:
            params["binary_data_size"] = len(data)
            tails.append(data)
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": True}} for o in request.outputs
        ]
    head = json.dumps(header).encode()
    return head + b"".join(tails), len(head)


def _bytes_form(items: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def grpc_response(answer: rest.WorkerAnswer) -> Any:
    """The worker's REST answer (JSON header, binary tensors) as a ModelInferResponse."""
    length = int(answer.header_length) if answer.header_length else len(answer.content)
    head = json.loads(answer.content[:length])
    tail = answer.content[length:]
    response = pb.ModelInferResponse(
        model_name=head.get("model_name", ""),
        model_version=head.get("model_version") or "",
        id=head.get("id") or "",
    )
    offset = 0
    for out in head["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:  # came as JSON: put back in the binary form
            data = out.get("data") or []
            if out["datatype"] == "BYTES":
                content = _bytes_form(str(x).encode() for x in data)
            else:
                content = _pack(out["datatype"], data)
        else:
            content = tail[offset : offset + size]
            offset += size
        response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        response.raw_output_contents.append(content)
    return response


_PACK = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}


def _pack(datatype: str, data: list[Any]) -> bytes:
    return struct.pack(f"<{len(data)}{_PACK[datatype]}", *data)


async def serve(services: Services, host: str, port: int) -> Callable[[], Awaitable[None]]:
    """Start the gRPC server; returns what stops it."""
    limit = services.settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(services), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s:%d", host, bound)

    async def stop() -> None:
        await server.stop(grace=2)

    return stop
