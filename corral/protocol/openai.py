"""OpenAI wire models: chat completions, completions, embeddings, models.

Fields follow the order of OpenAI's API reference. Unknown request fields are
accepted and ignored (as vLLM and llama.cpp's server do), because clients send
newer fields (``store``, ``metadata``, ``parallel_tool_calls``) that change nothing
here. Known fields are validated strictly: a bad value is a 400, not a surprise.

A few widely used extensions are accepted under the names llama.cpp and vLLM give
them: ``top_k``, ``min_p``, ``repeat_penalty``, ``repeat_last_n``, ``ignore_eos``.
This module depends on pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

MAX_STOP_SEQUENCES = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- shared request pieces ---------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool = False


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class ToolCallFunction(_Request):
    name: str
    arguments: str


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: dict[str, Any]


class AudioPart(_Request):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class JsonSchemaFormat(_Request):
    """``response_format.json_schema``: the schema the reply must follow (structured outputs)."""

    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    # Enforced either way; an explicit false lets keywords constrained decoding cannot
    # hold be left out instead of refused (``corral.engines.guidance``).
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    """``tool_choice`` naming the one function the reply must call."""

    type: Literal["function"]
    function: NamedFunction


Stop = str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None


class StructuredOutputs(_Request):
    """vLLM's ``structured_outputs``: the reply is held to one of these."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None


# Choices per request (n): each runs as one more sequence in the worker's slots.
MAX_CHOICES = 16


class SamplingFields(_Request):
    """Sampling fields common to chat completions and completions."""

    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    user: str | None = None
    # Extensions (llama.cpp / vLLM names).
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    repeat_last_n: int | None = Field(None, ge=-1)
    ignore_eos: bool = False
    # Structured output beyond response_format: llama-server's grammar (GBNF or Lark)
    # and json_schema, vLLM's structured_outputs.
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    structured_outputs: StructuredOutputs | None = None
    # Corral's: add engine timings to the usage (what Ollama's API reports).
    timings: bool = False

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --- chat completions -------------------------------------------------------------


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI features these models do not have: named here so that asking for them is
    # a 400 naming the parameter, not silently ignored as unknown fields are.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(m != "text" for m in value):
            raise ValueError("only the text modality is supported")
        return value

    @field_validator("audio", "prediction", "web_search_options")
    @classmethod
    def _not_offered(cls, value: dict[str, Any] | None, info: ValidationInfo) -> None:
        if value is not None:
            raise ValueError(f"{info.field_name} is not supported by these models")
        return None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class _Sparse(_Wire):
    """A streamed fragment: fields that are None are omitted, as OpenAI sends them."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionDelta(_Sparse):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Sparse):
    """A piece of a streamed tool call: the first carries id, type and name, later ones
    only argument text; ``index`` says which call of the message it belongs to."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(_Sparse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class TopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Wire):
    """A chat choice's ``logprobs``: one entry per generated token."""

    content: list[TokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(_Wire):
    """A completion choice's ``logprobs``, in the legacy shape of ``/v1/completions``."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChoiceMessage(_Wire):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda v: v is None)


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class ChatChoice(_Wire):
    index: int
    message: ChoiceMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason
    # vLLM's: the stop string that ended the reply, when one did.
    stop_reason: str | None = Field(None, exclude_if=lambda v: v is None)


class Timings(_Wire):
    """Engine time for one request (Corral's extension; asked for with ``timings``)."""

    prompt_ns: int
    generation_ns: int
    prompt_tokens_cached: int


class PromptTokensDetails(_Wire):
    cached_tokens: int  # prompt tokens whose KV was reused, not computed again


class Usage(_Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = Field(None, exclude_if=lambda v: v is None)
    timings: Timings | None = Field(None, exclude_if=lambda v: v is None)


class ChatCompletion(_Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatChunkChoice(_Wire):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    # vLLM's: the stop string that ended the reply, when one did.
    stop_reason: str | None = Field(None, exclude_if=lambda v: v is None)


class ChatCompletionChunk(_Wire):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- completions ------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | Annotated[list[int], Field(min_length=1)]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(16, ge=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _single_prompt(cls, value: Any) -> Any:
        # OpenAI also accepts a list with one prompt; more than one is a batch (n choices).
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
            return value[0]
        if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
            raise ValueError("only one prompt per request is supported")
        return value


class CompletionChoice(_Wire):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None
    # vLLM's: the stop string that ended the reply, when one did.
    stop_reason: str | None = Field(None, exclude_if=lambda v: v is None)


class Completion(_Wire):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- embeddings -------------------------------------------------------------------

EmbeddingInput = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)


class EmbeddingRequest(_Request):
    input: EmbeddingInput
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # Extension (Ollama's /api/embed sends it, true by default there): cut an input
    # longer than the model's context to fit, instead of refusing it with a 400.
    truncate: bool = False

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of items, each a text or a token list."""
        value = self.input
        if isinstance(value, str):
            return [value]
        items: list[str | list[int]] = []
        tokens: list[int] = []
        for v in value:
            if isinstance(v, int):
                tokens.append(v)
            else:
                items.append(v)
        return [tokens] if tokens else items


class Embedding(_Wire):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingUsage(_Wire):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Wire):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- models -----------------------------------------------------------------------


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``; ``corral`` carries Corral's own metadata."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "corral"
    corral: dict[str, Any] = Field(default_factory=dict)


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]
