"""Anthropic Messages API wire models: the request of ``POST /v1/messages``.

Fields follow Anthropic's API reference and the official ``anthropic`` SDK's types.
Unknown top-level fields are ignored (clients such as Claude Code send beta fields
like ``context_management``); content blocks are checked by their ``type``, so a
block this server cannot use (an image, a server tool's result) is a 400 naming it
rather than text silently dropped.

This module depends on pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_SEQUENCES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextBlock(_Request):
    type: Literal["text"]
    text: str


class ImageBlock(_Request):
    type: Literal["image", "document"]


class ToolUseBlock(_Request):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Request):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool = False


class ThinkingBlock(_Request):
    """Reasoning a client sends back from an earlier turn: not shown to the model."""

    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(_Request):
    """A client tool. Server tools (``web_search``...) carry a ``type`` and are refused."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(_Request):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None


class OutputFormat(_Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    """``format`` holds the reply to a JSON Schema; ``effort`` means nothing here."""

    format: OutputFormat | None = None


class MessagesRequest(_Request):
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    # Samplers the API has since dropped; older clients send them, and they still work.
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
