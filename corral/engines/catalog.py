"""The engines this server runs, by name, and every question the gateway asks of them.

``check_serves``, the worker command, the memory estimate, a model's parameters and
the structured-output pre-check all go through here, so nothing above this layer
knows which engine runs a model. Engines come from three places, in this order:

1. ``BUILTIN``: Corral's own (one line per engine);
2. installed packages, through the ``corral.engines`` entry-point group;
3. the ``CORRAL_ENGINES`` setting (``module:attribute``, comma-separated), which is
   how a test or a one-off script adds an engine without packaging it.

Each names an ``EngineDescriptor`` instance. A model runs on its declared engine
(``engine:`` in ``corral.yaml``), else on the first engine that takes its format.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import ValidationError

from corral.engines.descriptor import (
    EngineDescriptor,
    EngineParams,
    LaunchContext,
    MemoryEstimate,
    WorkerCommand,
    WorkerResources,
)
from corral.errors import CorralError, InvalidRequest, UnsupportedCapability
from corral.registry.records import Capability, ModelRecord, capability_names
from corral.settings import env_name

BUILTIN: tuple[str, ...] = (
    "corral.engines.llamacpp.descriptor:descriptor",
    "corral.engines.transformers.descriptor:descriptor",
    "corral.engines.onnx.descriptor:descriptor",
    "corral.engines.vllm.descriptor:descriptor",
    # Last: it takes any format, but only models that declare it (engine: command).
    "corral.engines.command.descriptor:descriptor",
)
ENTRY_POINT_GROUP = "corral.engines"
# corral.yaml's short names for parameters every engine has.
DECLARED_ALIASES = {"context": "context_length"}
Source = Literal["default", "env", "flag"]


class EngineSettingsError(ValueError):
    """An engine parameter from the environment or a flag has an invalid value."""


class Catalog:
    def __init__(
        self,
        descriptors: Iterable[EngineDescriptor],
        defaults: Mapping[str, EngineParams] | None = None,
        sources: Mapping[tuple[str, str], Source] | None = None,
    ) -> None:
        self._by_name: dict[str, EngineDescriptor] = {}
        for descriptor in descriptors:
            self._by_name.setdefault(descriptor.name, descriptor)
        self.defaults = {
            name: (defaults or {}).get(name) or d.params_model()
            for name, d in self._by_name.items()
        }
        self.sources = dict(sources or {})

    @property
    def descriptors(self) -> list[EngineDescriptor]:
        return list(self._by_name.values())

    def get(self, name: str) -> EngineDescriptor:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnsupportedCapability(
                f"This server has no engine called {name!r} (it runs: {self._names()}).",
                param="model",
            ) from None

    def for_record(self, record: ModelRecord) -> EngineDescriptor:
        """The engine that runs ``record``, or a 400 saying why none does."""
        if record.engine is not None:
            descriptor = self._by_name.get(record.engine)
            if descriptor is None:
                raise UnsupportedCapability(
                    f"The model '{record.name}' is declared for the {record.engine} engine, "
                    f"which this server does not run (it runs: {self._names()}).",
                    param="model",
                )
            if record.format not in descriptor.formats:
                raise UnsupportedCapability(
                    f"The model '{record.name}' is {record.format}, which the "
                    f"{descriptor.name} engine it is declared for does not take "
                    f"({', '.join(sorted(descriptor.formats))}).",
                    param="model",
                )
            return descriptor
        for descriptor in self._by_name.values():
            if record.format in descriptor.formats:
                return descriptor
        raise UnsupportedCapability(
            f"The model '{record.name}' is {record.format}; this server has no engine for "
            f"that format yet (engines: {self._formats()}).",
            param="model",
        )

    def capabilities(self, record: ModelRecord) -> frozenset[Capability]:
        """What ``record`` can do here (nothing if no engine runs it)."""
        try:
            return self.for_record(record).capabilities(record)
        except UnsupportedCapability:
            return frozenset()

    def check_serves(self, record: ModelRecord, capability: Capability) -> EngineDescriptor:
        """The engine for ``record`` if it can serve ``capability``, else a clear 400."""
        descriptor = self.for_record(record)
        if (why := descriptor.unavailable(record)) is not None:
            raise UnsupportedCapability(why, param="model")
        offered = descriptor.capabilities(record)
        if capability in offered:
            return descriptor
        if capability == Capability.EMBEDDINGS:
            message = (
                f"The model '{record.name}' does not produce embeddings; use an embedding model."
            )
        elif capability == Capability.RERANK:
            message = f"The model '{record.name}' is not a reranker; use a reranking model."
        elif capability == Capability.TENSOR:
            message = (
                f"The model '{record.name}' is not a tensor model; the Open Inference "
                "Protocol (/v2) serves ONNX models."
            )
        elif offered == {Capability.TENSOR}:
            message = (
                f"The model '{record.name}' is a tensor model; call it with the Open "
                f"Inference Protocol: POST /v2/models/{record.name}/infer."
            )
        elif offered == {Capability.RERANK}:
            message = f"The model '{record.name}' is a reranker; it can only score documents."
        elif offered == {Capability.EMBEDDINGS}:
            message = f"The model '{record.name}' is an embedding model; it cannot generate text."
        else:
            message = f"The model '{record.name}' cannot serve {capability.value} requests."
        raise UnsupportedCapability(message, param="model")

    # --- parameters -----------------------------------------------------------------

    def params(self, record: ModelRecord, changes: Mapping[str, Any] | None = None) -> EngineParams:
        """``record``'s worker parameters: the server's defaults for its engine, then
        its declared ones (``corral.yaml``), then ``changes`` (a reload). A bad value
        is a 400 naming the parameter."""
        descriptor = self.for_record(record)
        return self.merge(descriptor, self.defaults[descriptor.name], record.params, changes)

    def sleeps(self, record: ModelRecord, params: EngineParams) -> bool:
        """Whether ``record``'s worker with ``params`` sleeps rather than stops when it
        must give up its GPU."""
        return self.for_record(record).sleeps(params)

    def check_declared(self, params: Mapping[str, Any] | None) -> None:
        """Refuse (400) parameters a pull would record for a model not downloaded yet,
        when they name their engine: a bad command template, say, is refused before
        any byte is fetched, not at the first load."""
        engine = (params or {}).get("engine")
        if not engine:
            return  # the engine follows from the format, known once the files are here
        descriptor = self.get(str(engine))
        rest = {k: v for k, v in (params or {}).items() if k != "engine"}
        self.merge(descriptor, self.defaults[descriptor.name], rest)

    def check_configuration(self, record: ModelRecord, params: Mapping[str, Any]) -> None:
        """Refuse (400, naming it) a parameter, or an engine, ``record`` could not run
        with if its declared parameters became ``params`` (``engine`` among them):
        checked when they are set, not at the next load."""
        engine = params.get("engine", record.engine)
        rest = {k: v for k, v in params.items() if k != "engine"}
        self.params(replace(record, params=rest, engine=str(engine) if engine else None))

    def merge(
        self,
        descriptor: EngineDescriptor,
        base: EngineParams,
        declared: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> EngineParams:
        fields = descriptor.params_model.model_fields
        values = base.model_dump()
        for key, value in (declared or {}).items():
            key = DECLARED_ALIASES.get(key, key)
            if key in fields and value is not None:
                values[key] = value
        values.update({k: v for k, v in (changes or {}).items() if v is not None})
        try:
            return descriptor.params_model.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first["loc"]) or "params"
            raise InvalidRequest(
                f"Invalid {descriptor.name} parameter {name}: {first['msg']}.", param=name
            ) from None

    # --- what the scheduler asks ------------------------------------------------------

    def estimate(self, record: ModelRecord, params: EngineParams) -> MemoryEstimate:
        return self.for_record(record).estimate(record, params)

    def command(
        self, record: ModelRecord, params: EngineParams, ctx: LaunchContext
    ) -> WorkerCommand:
        return self.for_record(record).command(record, params, ctx)

    def resources(self, record: ModelRecord, params: EngineParams) -> WorkerResources:
        descriptor = self.for_record(record)
        return descriptor.resources(record, params, descriptor.estimate(record, params))

    def precheck(
        self, record: ModelRecord, capability: Capability, body: Mapping[str, Any]
    ) -> None:
        self.for_record(record).precheck(record, capability, body)

    def describe(self, record: ModelRecord) -> dict[str, Any]:
        """A record as the registry APIs show it, with the engine it runs on (``engine``
        stays what was declared, or null) and what it can do here."""
        try:
            runs_on: str | None = self.for_record(record).name
        except UnsupportedCapability:
            runs_on = None
        try:  # what its worker starts with here: corral bench runs in-process alike
            in_effect: dict[str, Any] | None = self.params(record).model_dump(mode="json")
        except CorralError:
            in_effect = None
        return {
            **record.to_dict(),
            "runs_on": runs_on,
            "engine_params": in_effect,
            "capabilities": capability_names(self.capabilities(record)),
        }

    def inspect(self, record: ModelRecord) -> dict[str, Any]:
        """What ``record`` is, as its engine reads it (``corral inspect``)."""
        return {"name": record.name, **self.for_record(record).inspect(record)}

    def _names(self) -> str:
        return ", ".join(self._by_name) or "none"

    def _formats(self) -> str:
        return "; ".join(f"{n}: {', '.join(sorted(d.formats))}" for n, d in self._by_name.items())


def load_catalog(
    extra: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Catalog:
    """The built-in, installed and ``extra`` engines, with their server-wide defaults
    read from ``CORRAL_<FIELD>`` variables and ``flags`` (None = not given)."""
    environ = os.environ if environ is None else environ
    descriptors = [_load(path) for path in BUILTIN]
    descriptors += [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    descriptors += [_load(path) for path in extra]
    defaults: dict[str, EngineParams] = {}
    sources: dict[tuple[str, str], Source] = {}
    for descriptor in descriptors:
        values: dict[str, Any] = {}
        for name in descriptor.params_model.model_fields:
            raw = environ.get(env_name(name))
            source: Source = "default"
            if raw:
                values[name], source = raw, "env"
            if flags and flags.get(name) is not None:
                values[name], source = flags[name], "flag"
            sources[(descriptor.name, name)] = source
        try:
            defaults[descriptor.name] = descriptor.params_model.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(_describe(err, sources, descriptor.name) for err in exc.errors())
            raise EngineSettingsError(problems) from None
    return Catalog(descriptors, defaults, sources)


def load_object(path: str, default: str = "descriptor") -> Any:
    """The object ``module:attribute`` names (``default`` when no attribute is given)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute or default)


def _load(path: str) -> EngineDescriptor:
    descriptor = load_object(path)
    if not isinstance(descriptor, EngineDescriptor):
        raise TypeError(f"{path} is not an EngineDescriptor")
    return descriptor


def _describe(err: Any, sources: Mapping[tuple[str, str], Source], engine: str) -> str:
    field = str(err["loc"][0]) if err["loc"] else "?"
    flag = f"--{field.replace('_', '-')}"
    origin = env_name(field) if sources.get((engine, field)) == "env" else flag
    return f"{origin}: {err['msg']}"
