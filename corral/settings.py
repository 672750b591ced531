"""Every setting Corral reads, in one typed place.

Each field has a default and a description; values come from (lowest to highest
precedence) the default, an environment variable ``CORRAL_<NAME>``, and a CLI flag.
Engine parameters (threads, slots, context length...) are not here: each engine
declares its own (``corral.engines``), read from the same kind of variables.
``load_settings`` remembers where each value came from so ``corral config show`` can
say so: "why is it using 4 slots?" should be answerable without reading code.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.units import parse_keep_alive, parse_size

ENV_PREFIX = "CORRAL_"
Source = Literal["default", "env", "flag"]


def default_home() -> Path:
    """The per-user data directory (XDG on Linux, Application Support on macOS)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "corral"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "corral"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


class Settings(BaseModel):
    """Corral's configuration. Field order is the order ``config show`` prints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(
        default_factory=default_home,
        description="Where models, logs and state live.",
    )
    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int = Field(11435, ge=0, le=65535, description="Port the server listens on.")
    grpc_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol over gRPC (0: off; needs "
        "pip install 'corral[grpc]').",
    )
    engines: list[str] = Field(
        default_factory=list,
        description="Engines to add to the built-in and installed ones, as module:attribute "
        "naming an EngineDescriptor (comma-separated). Engine parameters (threads, slots, "
        "...) are the engines' own settings: `corral config show` lists them.",
    )
    worker_start_timeout: float = Field(
        300.0, gt=0, description="Seconds a worker may take to load its model."
    )
    worker_stop_grace: float = Field(
        5.0, ge=0, description="Seconds a worker gets after SIGTERM before it is killed."
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish on shutdown."
    )
    memory_budget: str | None = Field(
        None,
        description="Memory models may use (e.g. 8GiB); unset = available RAM minus the reserve.",
    )
    memory_reserve: str = Field(
        "1GiB", description="RAM left for everything else when the budget is automatic."
    )
    vram_budget: str | None = Field(
        None,
        description="GPU memory models may use on each GPU (e.g. 20GiB); unset = what is "
        "free on it minus vram_reserve. Inert without a GPU.",
    )
    vram_reserve: str = Field(
        "512MiB", description="GPU memory left on each GPU when the budget is automatic."
    )
    gpu_probe: str = Field(
        "",
        description="How GPUs are found: '' = NVML (nvidia-ml-py) when it works, 'none' = "
        "never, or module:attribute naming a probe (tests give a device table this way).",
    )
    max_loaded_models: int = Field(
        3, ge=0, description="Most models loaded at once; 0 = limited by memory only."
    )
    keep_alive: str = Field(
        "5m",
        description="How long an idle model stays loaded (Ollama style: 5m, 1h, 0 = unload "
        "when idle, -1 = forever); requests may override it.",
    )
    preload: list[str] = Field(
        default_factory=list,
        description="Models loaded at startup in the background (comma-separated); never "
        "unloaded for being idle.",
    )
    pinned: list[str] = Field(
        default_factory=list,
        description="Models never evicted to make room (comma-separated).",
    )
    batch_keys: list[str] = Field(
        default_factory=list,
        description="API keys whose requests always run at batch priority (comma-separated).",
    )
    max_queue: int = Field(128, ge=0, description="Requests that may wait per model; more get 429.")
    queue_timeout: float = Field(
        300.0, gt=0, description="Seconds a request may wait for a model before a 503."
    )
    group_by_model: bool = Field(
        True,
        description="Under memory pressure, serve all queued requests of a loaded model "
        "before swapping it out (instead of swapping per request).",
    )
    demo_model: bool = Field(
        True, description="Create a tiny random-weight demo model when no model exists."
    )
    database_url: str | None = Field(
        None,
        description="Registry database (SQLAlchemy URL, e.g. postgresql+psycopg://...); "
        "unset = SQLite in the home directory.",
    )
    disk_reserve: str = Field(
        "1GiB", description="Free disk space a pull must leave; a pull that would not is refused."
    )
    max_parallel_pulls: int = Field(
        2, ge=1, description="Pulls downloading at once; more wait in line."
    )
    max_upload: str = Field(
        "512MiB", description="Largest file /v1/files accepts; a larger upload stops at the limit."
    )
    max_body: str = Field(
        "64MiB",
        description="Largest request body (other than a /v1/files upload); larger gets 413.",
    )
    max_messages: int = Field(
        4096, ge=1, description="Most messages one chat request may have (then 400)."
    )
    max_tools: int = Field(512, ge=1, description="Most tools one request may offer (then 400).")
    header_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take to send a request's headers."
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may pause between two chunks before a 408.",
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections and requests at once; more get 503."
    )
    log_prompts: bool = Field(
        False,
        description="Keep each request's and answer's body (up to 64 KiB each) in the "
        "request log; off: no prompt or output text is ever stored.",
    )
    request_log_days: float = Field(30.0, gt=0, description="Days the request log keeps a request.")
    request_log_max_rows: int = Field(
        1_000_000, ge=1000, description="Most requests the request log keeps (oldest go)."
    )
    metrics_need_key: bool = Field(
        False,
        description="Once API keys exist, /metrics needs an admin key (off: it is public, "
        "like most exporters).",
    )
    batch_in_flight: int = Field(
        16, ge=1, description="Requests each batch keeps waiting in the scheduler at once."
    )
    prometheus_url: str | None = Field(
        None,
        description="A Prometheus server that scrapes this gateway (e.g. http://prometheus:9090): "
        "the dashboard's charts read from it; unset = the gateway's own last hour.",
    )
    ray_address: str | None = Field(
        None,
        description="A Ray cluster to place workers on (e.g. 10.0.0.5:6379, or 'auto' on a "
        "node of it); each worker asks for the CPUs, GPUs and memory its engine needs and "
        "a model's `resources`. Needs pip install 'corral[ray]'. Unset = local processes.",
    )
    gateway_id: str | None = Field(
        None,
        description="This gateway's name among several on one database (batch leases); "
        "unset = host name and port. Keep it across restarts.",
    )
    batch_chunk: int = Field(
        500,
        ge=1,
        description="Lines per chunk of a batch: the unit several gateways split a batch by.",
    )
    batch_lease: float = Field(
        15.0,
        gt=0,
        description="Seconds a gateway holds a batch without renewing; then another "
        "gateway on the same database takes it over.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names requests may be addressed to besides localhost and IP "
        "addresses (comma-separated; * = any): a web page cannot reach the API through "
        "DNS rebinding.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (e.g. http://localhost:3000) allowed to make state-changing "
        "requests and CORS calls besides loopback ones (comma-separated; * = any).",
    )
    import_dirs: list[str] = Field(
        default_factory=list,
        description="Directories the HTTP API may import or pull models from on this "
        "machine's disk (comma-separated); empty = none. The CLI's own imports are not "
        "limited.",
    )
    allow_private_pulls: bool = Field(
        False,
        description="Let pulls fetch URLs on loopback or private-network addresses (the "
        "Hub endpoint, HF_ENDPOINT, is always allowed).",
    )
    insecure: bool = Field(
        False,
        description="Listen on a non-loopback address although API keys do not exist yet: "
        "anyone who can reach the port can use and manage the server.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity of the gateway and its workers."
    )

    @field_validator(
        "preload",
        "pinned",
        "batch_keys",
        "engines",
        "allowed_hosts",
        "allowed_origins",
        "import_dirs",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "memory_budget",
        "memory_reserve",
        "vram_budget",
        "vram_reserve",
        "disk_reserve",
        "max_upload",
        "max_body",
    )
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @property
    def gateway_name(self) -> str:
        return self.gateway_id or f"{socket.gethostname()}:{self.port}"

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_keep_alive(value)
        return value

    @property
    def keep_alive_seconds(self) -> float | None:
        return parse_keep_alive(self.keep_alive)

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else parse_size(self.memory_budget)

    @property
    def memory_reserve_bytes(self) -> int:
        return parse_size(self.memory_reserve)

    @property
    def vram_budget_bytes(self) -> int | None:
        return None if self.vram_budget is None else parse_size(self.vram_budget)

    @property
    def vram_reserve_bytes(self) -> int:
        return parse_size(self.vram_reserve)

    @property
    def max_upload_bytes(self) -> int:
        return parse_size(self.max_upload)

    @property
    def max_body_bytes(self) -> int:
        return parse_size(self.max_body)

    @property
    def disk_reserve_bytes(self) -> int:
        return parse_size(self.disk_reserve)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


class SettingsError(ValueError):
    """A setting from the environment or a flag has an invalid value."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, Source]]:
    """Build settings from defaults, ``CORRAL_*`` variables and flags (None = not given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, Source] = dict.fromkeys(Settings.model_fields, "default")
    for name in Settings.model_fields:
        raw = environ.get(env_name(name))
        if raw is not None and raw != "":
            values[name] = raw
            sources[name] = "env"
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in Settings.model_fields:
            raise SettingsError(f"unknown setting {name!r}")
        values[name] = value
        sources[name] = "flag"
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, sources) for err in exc.errors())
        raise SettingsError(problems) from None
    return settings, sources


def _describe(err: Any, sources: Mapping[str, Source]) -> str:
    field = str(err["loc"][0]) if err["loc"] else "?"
    origin = env_name(field) if sources.get(field) == "env" else f"--{field.replace('_', '-')}"
    return f"{origin}: {err['msg']}"
