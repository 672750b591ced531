"""The Open Inference Protocol (KServe V2) over REST, for tensor models.

What Triton, KServe and MLServer serve, so ``tritonclient.http`` and KServe tooling
work unchanged: server and model health, model metadata, and inference with JSON or
binary tensors. A model's version is its tag (``/v2/models/iris/versions/2`` is
``iris:2``); with no version, the name as given: a bare ``iris`` means its default
version (``Registry.get``: the one marked default, else the newest).

Infer bodies are relayed to the model's worker as they came, binary tensors and all:
the worker decodes and checks them against the model (``corral.worker.tensors``). A
gzip or deflate body (tritonclient's request compression) is inflated here first,
bounded by the server's body limit. Errors are V2's ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from corral import __version__
from corral.api.requests import caller_of
from corral.api.services import Services, services_of
from corral.api.spec import V2, route
from corral.errors import InvalidRequest, RequestTooLarge
from corral.httputil import errors_shaped, json_response, run_until_disconnect
from corral.protocol import v2
from corral.registry.records import Capability, ModelRecord
from corral.service.inference import Caller
from corral.service.worker_client import worker_error

log = logging.getLogger("corral.v2")
v2_errors = errors_shaped(lambda error: {"error": error.message}, log)
EXTENSIONS = ["binary_tensor_data"]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


@v2_errors
async def server_metadata(_: Request) -> Response:
    body = v2.ServerMetadata(name="corral", version=__version__, extensions=EXTENSIONS)
    return json_response(body.model_dump())


@v2_errors
async def live(_: Request) -> Response:
    return json_response({"live": True})


@v2_errors
async def ready(request: Request) -> Response:
    """Ready when the registry answers (models load on their first request)."""
    await asyncio.to_thread(services_of(request).registry.list)
    return json_response({"ready": True})


def resolve(services: Services, name: str, version: str | None) -> ModelRecord:
    """The model ``name`` names, at ``version`` (its tag), if it is a tensor model."""
    if version:
        if ":" in name:
            raise InvalidRequest(
                f"'{name}' already names a tag; give the version in the path or the tag, not both."
            )
        name = f"{name}:{version}"
    return services.inference.resolve(name, Capability.TENSOR)


@dataclass(frozen=True)
class WorkerAnswer:
    content: bytes
    content_type: str
    header_length: str | None  # when binary tensors follow the JSON


async def ask_worker(
    services: Services,
    caller: Caller,
    record: ModelRecord,
    name: str,
    version: str | None,
    suffix: str = "",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> WorkerAnswer:
    """A V2 request to the model's worker (loaded if need be), under the name and
    version the client used (with none, the version its name means: a response names
    the version that answered, as Triton's do); a worker's refusal raises its error."""
    if version is None and record.base == name:
        version = record.tag
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + suffix
    exchange = await services.inference.send(record, path, body, caller, headers=headers)
    reply = exchange.reply
    content = await reply.read()
    if reply.status != 200:
        raise worker_error(reply.status, content)
    return WorkerAnswer(content, reply.content_type, reply.headers.get(v2.HEADER_LENGTH))


async def metadata(
    services: Services, caller: Caller, name: str, version: str | None
) -> v2.ModelMetadata:
    """The model's tensors, from its worker, and its versions, from the registry."""
    record = resolve(services, name, version)
    answer = await ask_worker(services, caller, record, name, version)
    meta = v2.ModelMetadata.model_validate_json(answer.content)
    versions = await asyncio.to_thread(services.registry.versions, record.name)
    meta.versions = [r.tag for r in versions]
    return meta


def _path(request: Request) -> tuple[str, str | None]:
    return request.path_params["name"], request.path_params.get("version")


@v2_errors
async def model_ready(request: Request) -> Response:
    """Ready when the model exists and its engine can run here; it loads on demand."""
    name, version = _path(request)
    record = resolve(services_of(request), name, version)
    return json_response({"name": name, "ready": True, "id": record.name})


@v2_errors
async def model_metadata(request: Request) -> Response:
    """The model's inputs and outputs, from its loaded worker (loading it if need be)."""
    services = services_of(request)
    name, version = _path(request)
    caller = caller_of(request, services.settings.batch_keys)
    meta = await run_until_disconnect(request, metadata(services, caller, name, version))
    return json_response(meta.model_dump())


@v2_errors
async def infer(request: Request) -> Response:
    """Tensors in, tensors out. JSON tensors, or Triton's binary tensor extension
    (``Inference-Header-Content-Length``); see the Open Inference Protocol."""
    services = services_of(request)
    name, version = _path(request)
    record = resolve(services, name, version)
    body = await _body(request)
    headers = {}
    if (length := request.headers.get(v2.HEADER_LENGTH)) is not None:
        headers[v2.HEADER_LENGTH] = length
    caller = caller_of(request, services.settings.batch_keys)
    answer = await run_until_disconnect(
        request, ask_worker(services, caller, record, name, version, "/infer", body, headers)
    )
    out_headers = {}
    if answer.header_length is not None:
        out_headers[v2.HEADER_LENGTH] = answer.header_length
    return Response(answer.content, media_type=answer.content_type, headers=out_headers)


async def _body(request: Request) -> bytes:
    """The body, inflated if it came compressed; no bigger than the body limit."""
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported (gzip, deflate).")
    limit = services_of(request).settings.max_body_bytes
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"The {encoding} body could not be inflated: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestTooLarge(f"The inflated body is larger than {limit} bytes.")
    return data


_MODEL = "/v2/models/{name:path}"
_VERSION = "/v2/models/{name:path}/versions/{version}"
routes = [
    route("GET", "/v2", server_metadata, "Server metadata (V2)", tag=V2, reply=v2.ServerMetadata),
    route(
        "GET", "/v2/health/live", live, "Server liveness (V2)", tag=V2, reply=Live, access="public"
    ),
    route(
        "GET",
        "/v2/health/ready",
        ready,
        "Server readiness (V2)",
        tag=V2,
        reply=Ready,
        access="public",
    ),
    route(
        "GET", _VERSION + "/ready", model_ready, "Model version readiness", tag=V2, reply=ModelReady
    ),
    route("GET", _MODEL + "/ready", model_ready, "Model readiness", tag=V2, reply=ModelReady),
    route(
        "POST",
        _VERSION + "/infer",
        infer,
        "Infer with a model version",
        tag=V2,
        reply=v2.InferResponse,
    ),
    route("POST", _MODEL + "/infer", infer, "Infer", tag=V2, reply=v2.InferResponse),
    route(
        "GET", _VERSION, model_metadata, "Model version metadata", tag=V2, reply=v2.ModelMetadata
    ),
    route("GET", _MODEL, model_metadata, "Model metadata", tag=V2, reply=v2.ModelMetadata),
]
