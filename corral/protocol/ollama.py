"""Ollama wire models: the requests of ``/api/chat``, ``/api/generate``, ``/api/embed``
and the model routes, and the ``options`` they carry.

Fields follow Ollama's API reference (``docs/api.md``, ``api/types.go``) and the
official clients' types. Unknown top-level fields are ignored, as Ollama's server
ignores them: clients send newer ones (``truncate``, ``shift``, ``width``) that
change nothing here. ``options`` is different: every key must be one Ollama
defines, so a typo such as ``temprature`` is a 400 naming it instead of a sampler
silently left at its default. Types are strict, as in Ollama (Go's JSON decoding):
``"stream": "yes"``, ``"options": "fast"`` or ``"num_predict": "10"`` is a 400.

This module depends on pydantic only.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from corral.errors import InvalidRequest

MAX_STOP_SEQUENCES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# --- options ------------------------------------------------------------------------


class Options(BaseModel):
    """Ollama's ``options`` (``api/types.go``: ``Options`` and its ``Runner``).

    Ranges are the ones the worker enforces on the same samplers, so a bad value is
    refused here, in Ollama's error shape, before a model is loaded.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    # How Ollama loads a model (its runner); see LOAD_OPTIONS in ollama_openai.
    numa: bool | None = None
    num_ctx: int | None = Field(None, ge=0)
    num_batch: int | None = Field(None, ge=0)
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = Field(None, ge=0)
    # How it samples, per request.
    num_keep: int | None = None
    seed: int | None = None
    num_predict: int | None = Field(None, ge=-2)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    tfs_z: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = Field(None, ge=-1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    mirostat: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    penalize_newline: bool | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if key not in cls.model_fields:
                    raise _unknown_option(str(key), list(cls.model_fields))
        return value

    def given(self) -> dict[str, Any]:
        """The options the request set (a null counts as unset, as in Ollama)."""
        return self.model_dump(exclude_none=True)


def _unknown_option(key: str, known: list[str]) -> PydanticCustomError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return PydanticCustomError(
        "unknown_option", "unknown option {key}{hint}", {"key": repr(key), "hint": hint}
    )


# --- shared request pieces ----------------------------------------------------------

Format = Literal["", "json"] | dict[str, Any] | None
KeepAlive = int | float | str | None


class _Generation(_Request):
    """What chat and generate share."""

    model: str = Field(min_length=1)
    format: Format = None
    options: Options | None = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: KeepAlive = None
    think: bool | str | None = None
    logprobs: bool | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("", "json"):
            raise PydanticCustomError(
                "format",
                'format must be "json" or a JSON schema object, not {value}',
                {"value": repr(value)},
            )
        return value


class ToolFunction(_Request):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: ToolFunction


class ToolCallFunction(_Request):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(_Request):
    id: str | None = None
    function: ToolCallFunction


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


# --- requests -----------------------------------------------------------------------


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)  # none: just load the model
    tools: list[Tool] | None = None


class GenerateRequest(_Generation):
    prompt: str = ""  # empty: just load the model
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None  # deprecated by Ollama; accepted and ignored
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Request):
    """The legacy ``/api/embeddings``: one prompt, one vector."""

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class _Named(_Request):
    """Model routes take ``model``; Ollama still accepts the older ``name``."""

    model: str = ""
    name: str = ""

    def target(self) -> str:
        if not (self.model or self.name):
            raise InvalidRequest("model is required", param="model")
        return self.model or self.name


class ShowRequest(_Named):
    verbose: bool = False


class DeleteRequest(_Named):
    pass


class PullRequest(_Named):
    insecure: bool = False  # accepted; Corral verifies every file's sha256 anyway
    stream: bool = True


class CopyRequest(_Request):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)
