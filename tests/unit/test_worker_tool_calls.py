"""Tool calls a model writes by itself (tool_choice auto), through the worker's HTTP app.

A random-weight model never writes ``<tool_call>``, so a scripted engine plays the
model here; the worker app, its response writers and the official ``openai`` client
(over an in-process ASGI transport) are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import pytest

from corral.engines.base import (
    Capabilities,
    Engine,
    EventSink,
    Finished,
    GenerationRequest,
    RequestHandle,
    TextDelta,
)
from corral.registry.records import Capability
from corral.worker.app import create_worker_app

pytestmark = pytest.mark.anyio

SCRIPT = [
    "Checking",
    ".\n<tool",
    '_call>\n{"name": "weather", "argu',
    'ments": {"city": "Pa',
    'ris"}}\n</tool_call>\n<tool_call>{"name": "time", "arguments": {}}</tool_call>',
]
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("weather", "time")
]


class _Handle(RequestHandle):
    def cancel(self) -> None:
        pass


class ScriptedEngine(Engine):
    """Replies with the same text pieces to every request; records the requests."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = pieces
        self.requests: list[GenerationRequest] = []
        self.capabilities = Capabilities(
            offers=frozenset({Capability.CHAT, Capability.COMPLETION}),
            context_length=4096,
            slots=1,
        )
        self.chat_template = None
        self.bos_text = self.eos_text = ""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return [ord(c) for c in text]

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        self.requests.append(request)
        for piece in self.pieces:
            sink(TextDelta(piece))
        sink(Finished("stop", len(request.prompt_tokens), len(self.pieces)))
        return _Handle()

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx.ASGITransport(app=create_worker_app(ScriptedEngine(SCRIPT), "m"))
    async with (
        httpx.AsyncClient(transport=transport) as http,
        openai.AsyncOpenAI(base_url="http://worker/v1", api_key="x", http_client=http) as c,
    ):
        yield c


async def test_calls_in_the_text_become_tool_calls(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("weather", {"city": "Paris"}),
        ("time", {}),
    ]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


async def test_streamed_calls_accumulate_like_openais(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        tools=[{**t, "function": {**t["function"], "strict": True}} for t in TOOLS],
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    calls = choice.message.tool_calls or []
    assert [(c.index, c.function.name) for c in calls] == [(0, "weather"), (1, "time")]  # type: ignore[attr-defined]
    assert [c.function.parsed_arguments for c in calls] == [{"city": "Paris"}, {}]


async def test_without_tools_the_same_text_is_content(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content == "".join(SCRIPT)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop"
    none = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice="none"
    )
    assert none.choices[0].message.content == "".join(SCRIPT)


async def test_an_engine_without_grammars_refuses_structured_output(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
        )
    assert info.value.code == "unsupported_capability"
