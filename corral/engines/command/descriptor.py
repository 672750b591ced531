"""The ``command`` engine: any OpenAI-compatible server, started from a command template.

llama.cpp's ``llama-server``, vLLM, SGLang, TGI, ``python -m llama_cpp.server``: a
model declares the command that serves it (``params.command`` in ``corral.yaml``, or
``corral create``), and the gateway treats that server as one of its workers. Corral
provides what such a server lacks on its own:

- **start and health**: the command is filled in (``template.py``), run on a free
  loopback port, and polled at ``health_path`` until it answers 200, for at most
  ``start_timeout`` seconds;
- **no orphans**: it runs under ``corral.worker.supervise``, which stops it (and
  whatever it started) when the gateway dies, even by kill -9;
- **its logs** go to the worker log, and their last lines into the error of a load that
  fails or a request the server crashed on;
- **the translation** of names and usage (``corral.protocol.upstream``), so clients see
  exactly what a Corral worker would send, streams passed through as they arrive.

Corral cannot know what an arbitrary server holds in memory. For a GGUF file it uses
the llama.cpp estimate (the same library does the work); otherwise the files plus a
process. ``ram_estimate`` and ``vram_estimate`` replace the guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from corral.engines.command.template import MACROS, TemplateError, check, expand
from corral.engines.descriptor import (
    EngineDescriptor,
    EngineParams,
    LaunchContext,
    MemoryEstimate,
    WorkerCommand,
    default_threads,
)
from corral.engines.foreign import supervised
from corral.engines.llamacpp.descriptor import LlamaCppParams
from corral.engines.llamacpp.descriptor import descriptor as llamacpp
from corral.errors import EngineLoadError
from corral.registry.records import Capability, ModelRecord
from corral.units import parse_size

MiB = 1 << 20
# A server process of unknown make: a C++ server is less, a Python one (vLLM) more.
PROCESS_BYTES = 256 * MiB
CapabilityName = Literal["chat", "completion", "embeddings", "rerank"]


def _size(value: str | int) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


class CommandParams(EngineParams):
    command: str = Field(
        "",
        description="The server's command line, with macros: "
        + "; ".join(f"${{{k}}} = {v}" for k, v in MACROS.items())
        + ". Split like a shell would, never run by one.",
    )
    health_path: str = Field(
        "/health",
        pattern=r"^/\S*$",
        description="GET path that answers 200 once the model is loaded (llama-server, "
        "vLLM: /health; a server without one: /v1/models).",
    )
    start_timeout: float = Field(
        0, ge=0, description="Seconds the server may take to become healthy; 0 = the server's."
    )
    stop_grace: float = Field(
        10, ge=0, le=600, description="Seconds between SIGTERM and SIGKILL when it is stopped."
    )
    served_name: str = Field(
        "",
        description="The model name the server expects in requests ('' = the Corral "
        "name). Answers always carry the Corral name.",
    )
    capabilities: list[CapabilityName] = Field(
        default_factory=list,
        description="What the server offers; empty = from the model (a GGUF's facts; "
        "chat and completion otherwise).",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables added for the server."
    )
    threads: int = Field(
        default_factory=default_threads, ge=1, description="Threads, for ${THREADS}."
    )
    ram_estimate: str | int = Field(
        0, description="RAM the server takes (8GiB, 512MB); 0 = estimated from the model."
    )
    vram_estimate: str | int = Field(0, description="GPU memory the server takes; 0 = none.")

    @field_validator("command")
    @classmethod
    def _template(cls, value: str) -> str:
        if value:
            try:
                check(value)
            except TemplateError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("ram_estimate", "vram_estimate")
    @classmethod
    def _sizes(cls, value: str | int) -> str | int:
        _size(value)
        return value


class CommandDescriptor(EngineDescriptor):
    name = "command"
    # Whatever the server reads; a model runs here only when it declares this engine.
    formats = frozenset({"gguf", "safetensors", "onnx"})
    params_model = CommandParams

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        declared = record.params.get("capabilities")
        if isinstance(declared, list) and declared:
            known = {c.value for c in Capability}
            return frozenset(Capability(c) for c in declared if c in known)
        if record.format == "gguf":
            return llamacpp.capabilities(record)
        return frozenset({Capability.CHAT, Capability.COMPLETION})

    def command(
        self, record: ModelRecord, params: EngineParams, ctx: LaunchContext
    ) -> WorkerCommand:
        assert isinstance(params, CommandParams)
        if not params.command:
            raise EngineLoadError(
                f"The model '{record.name}' runs on the command engine but has no command: "
                "set params.command in corral.yaml (or corral create --param command=...)."
            )
        context = self.context_length(record, params)
        path = record.path
        values = {
            "PORT": str(ctx.port),
            "HOST": ctx.host,
            "MODEL_PATH": str(path),
            "MODEL_DIR": str(path if path.is_dir() else path.parent),
            "MODEL_NAME": record.name,
            "SLOTS": str(params.slots),
            "CONTEXT": str(context),
            "CONTEXT_TOTAL": str(context * params.slots),
            "THREADS": str(params.threads),
            "PYTHON": ctx.python,
        }
        return supervised(
            ctx,
            expand(params.command, values),
            grace=params.stop_grace,
            env=params.env_vars,
            health_path=params.health_path,
            start_timeout=params.start_timeout or None,
            served_name=params.served_name or None,
        )

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        assert isinstance(params, CommandParams)
        vram = _size(params.vram_estimate)
        if ram := _size(params.ram_estimate):
            return MemoryEstimate(weights=ram, kv_cache=0, buffers=0, process=0, vram=vram)
        if record.format == "gguf":  # llama.cpp's own figures, without Corral's Python
            as_llamacpp = LlamaCppParams(
                slots=params.slots,
                context_length=params.context_length,
                threads=params.threads,
                prompt_cache_mib=0,
            )
            guess = llamacpp.estimate(record, as_llamacpp)
            return MemoryEstimate(
                weights=guess.weights,
                kv_cache=guess.kv_cache,
                buffers=guess.buffers,
                process=PROCESS_BYTES,
                vram=vram,
            )
        return MemoryEstimate(
            weights=record.size, kv_cache=0, buffers=0, process=PROCESS_BYTES, vram=vram
        )


descriptor = CommandDescriptor()
