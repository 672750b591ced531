"""The settings of the fake worker (``tests.support.fake_worker``), passed as ``--params JSON``.

Kept apart from the worker, with nothing but pydantic and the engine seam's base model,
so that a test and the fake engine's descriptor (``tests.support.fake_engine``) can build
and serialise them without importing the server.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from corral.engines.descriptor import EngineParams


class FakeParams(EngineParams):
    """How the fake engine behaves: every field is a knob a test can turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Requests served at once; beyond this, requests wait in the worker.",
    )
    context_length: int = Field(
        default=2048,
        ge=0,
        description=(
            "Largest prompt accepted, in fake tokens (one per whitespace-separated word of the "
            "prompt or of all message contents together, plus one); a longer prompt gets "
            "400 context_length_exceeded."
        ),
    )
    tokens: int = Field(
        default=8,
        ge=0,
        description=(
            'Tokens generated per reply; token i is "t{i} ". Fewer if max_tokens / '
            'max_completion_tokens is smaller (finish_reason "length"), else "stop".'
        ),
    )
    token_delay: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Seconds the engine takes per generated token (slept before each, holding the "
            "slot); an embeddings request takes one such step."
        ),
    )
    start_delay: float = Field(
        default=0.0, ge=0, description="Seconds to sleep before listening: a slow model load."
    )
    fail_start: bool = Field(
        default=False,
        description="Fail the load: after start_delay, print a message and exit with code 3.",
    )
    crash_on: str | None = Field(
        default=None,
        description=(
            "Exit the process with code 70 (os._exit) when a request's prompt text (the "
            "prompt, any message content, or any embeddings input) contains this substring: "
            "a stream after its first token chunk is sent, a whole response after the engine "
            "ran it but before it is recorded and answered."
        ),
    )
    ignore_sigterm: bool = Field(
        default=False, description="Ignore SIGTERM, so that only SIGKILL (or stdin EOF) stops it."
    )
    embedding: bool = Field(
        default=False,
        description=(
            "An embedding model: serves only /v1/embeddings (the text endpoints answer "
            "400 unsupported_capability); a text model refuses /v1/embeddings the same way."
        ),
    )
    embedding_dims: int = Field(
        default=8, ge=1, le=65536, description="Length of the (unit-length) embedding vectors."
    )
    memory: int = Field(
        default=64 << 20,
        ge=0,
        description="Bytes the gateway's scheduler assumes the worker takes (its estimate).",
    )
    vram: int = Field(default=0, ge=0, description="GPU memory it is estimated to take.")
    sleep: bool = Field(
        default=False,
        description="Has a sleep mode (vLLM's): POST /sleep and /wake_up, counted in /health; "
        "asleep, it refuses inference with 503.",
    )
