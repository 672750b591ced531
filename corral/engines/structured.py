"""Which schema a chat request holds its reply to, in plain Python.

A forced tool call (``tool_choice`` "required" or a named function) holds the whole
reply to one call of an allowed tool; otherwise ``response_format`` may hold it to a
JSON Schema. The worker turns the chosen schema into its engine's grammar; the
gateway's pre-check (``EngineDescriptor.precheck``) runs the same selection with the
engine's schema check instead, so a schema the engine would refuse is refused before
a model is loaded for it. Nothing here imports an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from corral.errors import InvalidRequest
from corral.protocol.openai import ChatCompletionRequest, NamedToolChoice, Tool

ToolMode = Literal["off", "auto", "forced"]


class JsonGrammar(Protocol):
    """``Engine.json_grammar``: a grammar holding output to a JSON Schema (None: any object)."""

    def __call__(self, schema: dict[str, Any] | None, *, param: str) -> str: ...


def tool_choice(req: ChatCompletionRequest) -> tuple[ToolMode, list[Tool]]:
    """How the reply may call tools, and which: ``auto`` (may call any), ``forced`` (must
    call one of those returned: all for "required", the named one) or ``off``."""
    tools = req.tools or []
    choice = req.tool_choice
    if choice == "none" or (choice in (None, "auto") and not tools):
        return "off", []
    if choice in (None, "auto"):
        return "auto", tools
    if not tools:
        raise InvalidRequest(
            "tool_choice requires tools, and this request has none.", param="tool_choice"
        )
    if not isinstance(choice, NamedToolChoice):
        return "forced", tools  # "required"
    named = [t for t in tools if t.function.name == choice.function.name]
    if not named:
        known = ", ".join(repr(t.function.name) for t in tools)
        raise InvalidRequest(
            f"tool_choice names the function '{choice.function.name}', which is not among "
            f"the tools ({known}).",
            param="tool_choice",
        )
    return "forced", named[:1]


def output_grammar(req: ChatCompletionRequest, json_grammar: JsonGrammar) -> str | None:
    """The grammar the reply is held to: a forced tool call, else ``response_format``'s JSON.

    A forced call takes precedence: ``response_format`` shapes content, and a reply that
    must call a tool has none.
    """
    mode, tools = tool_choice(req)
    if mode == "forced":
        # Each schema checked on its own first, so that a 400 names the tool it is about.
        forced = {id(tool) for tool in tools}
        for i, tool in enumerate(req.tools or []):
            if id(tool) in forced and tool.function.parameters is not None:
                json_grammar(tool.function.parameters, param=f"tools[{i}].function.parameters")
        return json_grammar(tool_call_schema(tools), param="tools")
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_grammar(None, param="response_format")
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise InvalidRequest(
            "response_format of type 'json_schema' needs json_schema.schema, the JSON Schema "
            "the reply must follow.",
            param="response_format.json_schema.schema",
        )
    return json_grammar(fmt.json_schema.schema_, param="response_format")


def tool_call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """A JSON Schema for one call of one of ``tools``: ``{"name": ..., "arguments": {...}}``.

    Each tool's schema lives under ``$defs`` (the converter follows JSON pointers through
    objects only), and its own ``$ref``s are rebased there; its root definitions are
    renamed per tool because the converter names rules after a ref's last segment.
    """
    defs = {f"call-{i}": _call_schema(i, tool) for i, tool in enumerate(tools)}
    return {"anyOf": [{"$ref": f"#/$defs/{name}"} for name in defs], "$defs": defs}


def _call_schema(i: int, tool: Tool) -> dict[str, Any]:
    parameters = tool.function.parameters or {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    base = f"#/$defs/call-{i}/properties/arguments"
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.function.name},
            "arguments": _rebase(parameters, base, f"t{i}-"),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _rebase(schema: Any, base: str, prefix: str, root: bool = True) -> Any:
    if isinstance(schema, list):
        return [_rebase(item, base, prefix, False) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
            out[key] = base + _renamed(value[1:], prefix)
        elif root and key in ("$defs", "definitions") and isinstance(value, dict):
            out[key] = {prefix + name: _rebase(v, base, prefix, False) for name, v in value.items()}
        else:
            out[key] = _rebase(value, base, prefix, False)
    return out


def _renamed(pointer: str, prefix: str) -> str:
    """``/$defs/Point/x`` -> ``/$defs/t0-Point/x``: the root definitions are renamed."""
    parts = pointer.split("/")
    if len(parts) > 2 and parts[1] in ("$defs", "definitions"):
        parts[2] = prefix + parts[2]
    return "/".join(parts)
