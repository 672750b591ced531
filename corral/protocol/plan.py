"""The fit planner's request on the wire (``POST /admin/plan``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.units import parse_size


class PlanRequest(BaseModel):
    """A model (a registry name, or a ``config.json``'s content) and a machine; what
    is left out of the machine is the server's own."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="A registry model name.")
    config: dict[str, Any] | None = Field(
        None, description="A Hugging Face config.json, for a model not pulled yet."
    )
    gpu: str | int | None = Field(None, description="GPU memory (24GB); default: this machine's.")
    ram: str | int | None = Field(None, description="RAM for the model; default: this machine's.")
    context: int = Field(8192, ge=1, le=16_777_216, description="Context tokens per slot.")
    slots: int = Field(1, ge=1, le=1024, description="Sequences served at once.")
    quants: list[str] | None = Field(None, description="Quantizations to plan (default: several).")
    gpu_bandwidth: str | int | None = Field(None, description="Bytes/s, e.g. 1000GB.")
    ram_bandwidth: str | int | None = Field(None, description="Bytes/s, e.g. 60GB.")

    @field_validator("gpu", "ram", "gpu_bandwidth", "ram_bandwidth")
    @classmethod
    def _size(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_size(value)
        return value

    @model_validator(mode="after")
    def _one_model(self) -> PlanRequest:
        if (self.model is None) == (self.config is None):
            raise ValueError("give either model (a registry name) or config (a config.json)")
        return self
