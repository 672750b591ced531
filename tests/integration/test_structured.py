"""Structured outputs and tool calls, through the real server with the official client.

The model has random weights, so nothing but the grammar keeps its output in shape:
if every reply parses and validates, at several seeds, temperature 1 and streamed or
not, the constraint is doing the work.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from corral.registry.synthetic import build_vocab
from tests.support import models
from tests.support.server import CorralServer

pytestmark = pytest.mark.anyio
MODEL = "test-chat"
MESSAGES = [{"role": "user", "content": "Describe a fox as JSON."}]
RUNS = 10
MAX_TOKENS = 1000  # far above what the schemas allow: replies must end by themselves

PROFILE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["fox", "dog", "cat"]},
        "age": {"type": "integer"},
        "weight": {"type": "number"},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 8},
            "minItems": 1,
            "maxItems": 3,
        },
        "home": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "nick": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "kind", "age", "tags", "home", "active"],
    "additionalProperties": False,
}
POINTS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "x": {"type": "integer"},
            "label": {"const": "p"},
            "seen": {"type": "string", "format": "date"},
        },
        "required": ["x", "label", "seen"],
    },
    "minItems": 2,
    "maxItems": 4,
}
TREE = {
    "$defs": {
        "Leaf": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
        "Node": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/Leaf"}, "maxItems": 2},
            },
            "required": ["id", "kids"],
        },
    },
    "type": "object",
    "properties": {
        "root": {"$ref": "#/$defs/Node"},
        "kind": {"oneOf": [{"const": 1}, {"const": "one"}]},
    },
    "required": ["root", "kind"],
}

# The shapes issue 13 lists beyond the three above: numeric bounds, oneOf, pattern
# and format, additionalProperties with a schema, nested arrays, recursion.
WIDE = {
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": -5, "maximum": 40},
                "more": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 1},
            },
            "required": ["n"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "id": {"oneOf": [{"type": "integer", "multipleOf": 7}, {"type": "null"}]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"},
        "day": {"type": "string", "format": "date"},
        "grid": {
            "type": "array",
            "items": {"type": "array", "items": {"enum": [0, 1]}, "minItems": 1, "maxItems": 2},
            "maxItems": 2,
        },
        "tree": {"$ref": "#/$defs/Item"},
        "extra": {
            "type": "object",
            "patternProperties": {"^[a-z]{1,4}$": {"type": "boolean"}},
            "additionalProperties": False,
            "maxProperties": 2,
        },
    },
    "required": ["score", "id", "code", "day", "grid", "tree"],
    "additionalProperties": False,
}


@pytest.fixture
def client(server: CorralServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: CorralServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as c:
        yield c


async def reply(aclient: openai.AsyncOpenAI, seed: int, stream: bool, **kw: Any) -> tuple[str, str]:
    """(content, finish_reason) of one chat completion, streamed or not."""
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 1.0,
        "seed": seed,
        **kw,
    }
    if not stream:
        r = await aclient.chat.completions.create(**args)
        return r.choices[0].message.content or "", r.choices[0].finish_reason
    chunks = [c async for c in await aclient.chat.completions.create(stream=True, **args)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].choices[0].finish_reason or ""


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    "schema", [PROFILE, POINTS, TREE, WIDE], ids=["profile", "points", "tree", "wide"]
)
async def test_every_reply_validates_against_the_schema(
    aclient: openai.AsyncOpenAI, schema: dict[str, Any]
) -> None:
    fmt = json_schema_format(schema)
    replies = await asyncio.gather(
        *(reply(aclient, seed, seed % 2 == 0, response_format=fmt) for seed in range(RUNS))
    )
    for text, finish in replies:
        assert finish == "stop", text  # ended by the grammar, far below max_tokens
        jsonschema.validate(json.loads(text), schema)
    assert len({text for text, _ in replies}) > RUNS // 2  # the seeds did vary the output


def token_id(piece: str) -> int:
    return build_vocab(models.CHAT.n_merges, models.CHAT.n_vocab)[0].index(piece)


async def test_json_object_mode_gives_objects(aclient: openai.AsyncOpenAI) -> None:
    # A random model writes long strings (few of its tokens contain a quote); a bias
    # towards '"' and '}' keeps replies short. Only the grammar makes them JSON.
    bias = {str(token_id('"')): 8, str(token_id("}")): 8}
    replies = await asyncio.gather(
        *(
            reply(
                aclient,
                seed,
                seed % 2 == 1,
                response_format={"type": "json_object"},
                logit_bias=bias,
            )
            for seed in range(RUNS)
        )
    )
    for text, finish in replies:
        assert finish == "stop" and isinstance(json.loads(text), dict), text


async def test_without_json_mode_the_same_bias_gives_no_json(aclient: openai.AsyncOpenAI) -> None:
    """The control: the bias alone does not make JSON, so the test above can fail."""
    bias = {str(token_id('"')): 8, str(token_id("}")): 8}
    text, _ = await reply(aclient, 1, False, logit_bias=bias, max_tokens=60)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_out_of_tokens_is_length_and_truncated(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        seed=3,
        response_format=json_schema_format(PROFILE),  # type: ignore[arg-type]
    )
    text = r.choices[0].message.content or ""
    assert r.choices[0].finish_reason == "length" and text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


class Home(BaseModel):
    city: str = Field(max_length=10)
    floors: int


class Fox(BaseModel):
    name: str = Field(max_length=12)
    color: Literal["red", "grey", "white"]
    cubs: list[Annotated[str, Field(max_length=8)]] = Field(min_length=1, max_length=3)
    home: Home
    nick: str | None = Field(max_length=6)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in range(3):
        r = client.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Fox, seed=seed, max_tokens=MAX_TOKENS
        )
        fox = r.choices[0].message.parsed
        assert isinstance(fox, Fox) and isinstance(fox.home, Home)
        assert 1 <= len(fox.cubs) <= 3 and all(len(c) <= 8 for c in fox.cubs)


# --- tool calls -------------------------------------------------------------------------


class GetWeather(BaseModel):
    city: str = Field(max_length=10)
    unit: Literal["c", "f"]
    days: int | None


class SetAlarm(BaseModel):
    hour: int
    label: str = Field(max_length=6)


TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(SetAlarm)]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]


def check_call(call: Any, names: set[str]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


async def test_required_tool_call_every_time(aclient: openai.AsyncOpenAI) -> None:
    async def one(seed: int) -> None:
        r = await aclient.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice="required",
            seed=seed,
            temperature=1.0,
            max_tokens=MAX_TOKENS,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0], set(PARAMS))

    await asyncio.gather(*(one(seed) for seed in range(RUNS)))


def test_named_tool_call_streamed_accumulates_in_the_client(client: openai.OpenAI) -> None:
    for seed in range(3):
        with client.chat.completions.stream(
            model=MODEL,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "SetAlarm"}},
            seed=seed,
            max_tokens=MAX_TOKENS,
        ) as stream:
            final = stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        check_call(call, {"SetAlarm"})
        assert isinstance(call.function.parsed_arguments, SetAlarm)


def test_streamed_tool_call_deltas_have_openais_shape(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice="required",
            seed=5,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, rest = deltas[0].tool_calls[0], [d.tool_calls[0] for d in deltas[1:]]  # type: ignore[index]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name in PARAMS
    assert first.function.arguments == ""
    assert rest and all(d.index == 0 and d.id is None and d.type is None for d in rest)
    assert all(d.function is not None and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in rest)  # type: ignore[union-attr]
    jsonschema.validate(json.loads(arguments), PARAMS[first.function.name])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_tools_reach_the_prompt_and_results_go_back(client: openai.OpenAI) -> None:
    """test-chat's template ignores tools: they are written into the system turn."""

    def prompt_tokens(**kw: Any) -> int:
        r = client.chat.completions.create(model=MODEL, max_tokens=1, **kw)
        assert r.usage is not None
        return r.usage.prompt_tokens

    bare = prompt_tokens(messages=MESSAGES)
    with_tools = prompt_tokens(messages=MESSAGES, tools=TOOLS)
    assert with_tools > bare + 100
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "SetAlarm", "arguments": '{"hour": 7, "label": "up"}'},
    }
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "alarm set for 07:00"},
    ]
    assert prompt_tokens(messages=history, tools=TOOLS) > with_tools + 20


def test_auto_with_a_model_that_writes_no_call_is_plain_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, seed=2, max_tokens=20, temperature=1.0
    )
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


# --- refusals --------------------------------------------------------------------------


def chat_status(server: CorralServer, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **body}
    return httpx.post(server.openai_url + "/chat/completions", json=payload, timeout=60)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {
                "response_format": json_schema_format(
                    {"type": "object", "properties": {"a": {"type": "strin"}}}
                )
            },
            "response_format",
            "not a valid JSON Schema",
        ),
        (
            {
                "response_format": json_schema_format(
                    {"type": "object", "properties": {"n": {"not": {"type": "integer"}}}}
                )
            },
            "response_format",
            "'not' at $.properties.n",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}},
            "response_format.json_schema.schema",
            "needs json_schema.schema",
        ),
        ({"tool_choice": "required"}, "tool_choice", "requires tools"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "Nope"}}},
            "tool_choice",
            "'Nope'",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"s": {"type": "array", "uniqueItems": True}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
            "'uniqueItems' at $.properties.s",
        ),
        (
            {"grammar": 'root ::= "unclosed'},
            "grammar",
            "does not parse",
        ),
        (
            {"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'},
            "grammar",
            "constrains its output twice",
        ),
    ],
    ids=[
        "invalid-schema",
        "not",
        "no-schema",
        "required-no-tools",
        "unknown-tool",
        "tool-schema",
        "bad-grammar",
        "two-constraints",
    ],
)
def test_bad_requests_are_400_and_the_server_keeps_working(
    server: CorralServer, body: dict[str, Any], param: str, words: str
) -> None:
    for stream in (False, True):  # refused before a stream starts, too
        bad = chat_status(server, stream=stream, **body)
        assert bad.status_code == 400, bad.text
        error = bad.json()["error"]
        assert error["param"] == param and words in error["message"]
    good = chat_status(server, response_format={"type": "json_object"})
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"].startswith(
        "{"
    )


def test_strict_false_serves_a_schema_strict_refuses(server: CorralServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"enum": ["a", "b"]},
                "maxItems": 3,
                "uniqueItems": True,
            }
        },
        "required": ["tags"],
    }
    refused = chat_status(server, response_format=json_schema_format(schema))
    assert refused.status_code == 400 and "uniqueItems" in refused.text
    loose = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": False}}
    reply = chat_status(server, max_tokens=400, response_format=loose)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] == "stop", reply.text
    content = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert set(content) == {"tags"} and set(content["tags"]) <= {"a", "b"}  # the rest holds


def test_the_schema_that_killed_a_worker_is_served(server: CorralServer) -> None:
    """Issue 13's reproduction: ``"maxLength": 32767`` crashed the worker (SIGSEGV) and
    failed everything in flight on it. Now it is an ordinary schema."""
    schema = {
        "type": "object",
        "properties": {"notes": {"type": "string", "maxLength": 32767}},
    }
    for _ in range(2):
        reply = chat_status(server, max_tokens=64, response_format=json_schema_format(schema))
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        assert choice["message"]["content"].startswith("{")
        if choice["finish_reason"] == "stop":
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_grammar_regex_and_choice_extensions(client: openai.OpenAI) -> None:
    """llama-server's ``grammar`` and vLLM's ``structured_outputs``, on chat and completions."""
    yes_no = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=1.0,
        extra_body={"grammar": 'root ::= ("yes" | "no") "!"'},
    )
    assert yes_no.choices[0].message.content in ("yes!", "no!")
    for seed in range(3):
        code = client.completions.create(
            model=MODEL,
            prompt="The code is",
            max_tokens=20,
            temperature=1.0,
            seed=seed,
            extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{2}"}},
        )
        assert re.fullmatch("[A-Z]{3}-[0-9]{2}", code.choices[0].text)
        assert code.choices[0].finish_reason == "stop"
    pick = client.completions.create(
        model=MODEL,
        prompt="Pick one:",
        max_tokens=20,
        extra_body={"structured_outputs": {"choice": ["left", "right", "centre"]}},
    )
    assert pick.choices[0].text in ("left", "right", "centre")


def test_a_schema_that_would_be_refused_is_refused_before_the_model_loads(
    server: CorralServer, tmp_path: Path
) -> None:
    """The gateway checks schemas itself: on a model whose weights cannot even load, a
    bad schema is still a 400 naming the keyword, where a good request meets the load
    failure. So no model is loaded (or evicted) for a request that will be refused."""
    data = models.model_file(models.CHAT).read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[: len(data) * 3 // 4])  # header intact, tensor data cut short
    imported = httpx.post(
        server.url + "/admin/models/import",
        json={"path": str(broken), "name": "broken-weights"},
        timeout=60,
    )
    assert imported.status_code == 201, imported.text
    unenforceable = {"type": "object", "properties": {"n": {"not": {"type": "integer"}}}}
    try:
        bad = chat_status(
            server, model="broken-weights", response_format=json_schema_format(unenforceable)
        )
        assert bad.status_code == 400, bad.text
        assert "'not' at $.properties.n" in bad.json()["error"]["message"]
        bad_tool = chat_status(
            server,
            model="broken-weights",
            tools=[
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}},
                }
            ],
            tool_choice="required",
        )
        assert bad_tool.status_code == 400, bad_tool.text
        assert bad_tool.json()["error"]["param"] == "tools[0].function.parameters"
        ollama_bad = httpx.post(
            server.url + "/api/chat",
            json={
                "model": "broken-weights",
                "messages": MESSAGES,
                "format": unenforceable,
                "stream": False,
            },
            timeout=60,
        )
        assert ollama_bad.status_code == 400, ollama_bad.text
        assert "'not'" in ollama_bad.json()["error"]
        loads = chat_status(server, model="broken-weights", response_format={"type": "json_object"})
        assert loads.status_code >= 500, loads.text  # what a request that reaches the model meets
    finally:
        httpx.delete(server.url + "/admin/models/broken-weights", timeout=60)
