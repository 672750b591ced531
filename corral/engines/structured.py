"""What a request holds its output to, as an llguidance grammar any engine can run.

A forced tool call (``tool_choice`` "required" or a named function) holds the whole
reply to one call of an allowed tool; otherwise ``response_format`` may hold it to a
JSON Schema or any JSON object, or one of the extensions other servers take may hold
it to a schema, a regular expression, a list of choices or a grammar:

- llama-server's ``grammar`` (GBNF; Lark is accepted too) and ``json_schema``;
- vLLM's ``structured_outputs`` (``json``, ``regex``, ``choice`` or ``grammar``).

At most one of them: two constraints on one reply are a 400, not a silent choice.
The gateway's pre-check (``EngineDescriptor.precheck``) runs this too, so a request
that will be refused is refused before a model is loaded for it. Nothing here imports
an engine: the grammar is llguidance's (``guidance``), which every engine that offers
structured output runs with its own tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from corral.engines import guidance
from corral.errors import InvalidRequest
from corral.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    Tool,
)
from corral.registry.records import Capability

ToolMode = Literal["off", "auto", "forced"]


@dataclass(frozen=True)
class OutputConstraint:
    grammar: str  # llguidance's grammar format (``guidance``)
    param: str  # the request field it came from, for errors about it


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


def output_constraint(req: ChatCompletionRequest | CompletionRequest) -> OutputConstraint | None:
    """The grammar a reply is held to, if any; a 400 for one that cannot be enforced."""
    found: list[OutputConstraint] = []
    if isinstance(req, ChatCompletionRequest):
        mode, tools = tool_choice(req)
        if mode == "forced":
            found.append(_forced_call(req, tools))
        elif (fmt := _response_format(req)) is not None:
            found.append(fmt)
    found += _extensions(req)
    if len(found) > 1:
        named = " and ".join(c.param for c in found)
        raise InvalidRequest(
            f"This request constrains its output twice ({named}); send one of them.",
            param=found[1].param,
        )
    return found[0] if found else None


def _forced_call(req: ChatCompletionRequest, tools: list[Tool]) -> OutputConstraint:
    # Each schema checked on its own first, so that a 400 names the tool it is about.
    forced = {id(tool) for tool in tools}
    for i, tool in enumerate(req.tools or []):
        if id(tool) in forced and tool.function.parameters is not None:
            guidance.json_schema_grammar(
                tool.function.parameters,
                param=f"tools[{i}].function.parameters",
                strict=tool.function.strict is not False,
            )
    strict = all(tool.function.strict is not False for tool in tools)
    grammar = guidance.json_schema_grammar(tool_call_schema(tools), param="tools", strict=strict)
    return OutputConstraint(grammar, "tools")


def _response_format(req: ChatCompletionRequest) -> OutputConstraint | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputConstraint(guidance.any_json_object_grammar(), "response_format")
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise InvalidRequest(
            "response_format of type 'json_schema' needs json_schema.schema, the JSON Schema "
            "the reply must follow.",
            param="response_format.json_schema.schema",
        )
    grammar = guidance.json_schema_grammar(
        fmt.json_schema.schema_,
        param="response_format",
        strict=fmt.json_schema.strict is not False,  # only an explicit false loosens it
    )
    return OutputConstraint(grammar, "response_format")


def _extensions(req: SamplingFields) -> list[OutputConstraint]:
    found = []
    if req.grammar is not None:
        found.append(
            OutputConstraint(guidance.text_grammar(req.grammar, param="grammar"), "grammar")
        )
    if req.json_schema is not None:
        grammar = guidance.json_schema_grammar(req.json_schema, param="json_schema")
        found.append(OutputConstraint(grammar, "json_schema"))
    so = req.structured_outputs
    if so is not None:
        if so.json_ is not None:
            schema = _json_value(so.json_, "structured_outputs.json")
            param = "structured_outputs.json"
            found.append(OutputConstraint(guidance.json_schema_grammar(schema, param=param), param))
        if so.regex is not None:
            param = "structured_outputs.regex"
            found.append(OutputConstraint(guidance.regex_grammar(so.regex, param=param), param))
        if so.choice is not None:
            param = "structured_outputs.choice"
            found.append(OutputConstraint(guidance.choice_grammar(so.choice, param=param), param))
        if so.grammar is not None:
            param = "structured_outputs.grammar"
            found.append(OutputConstraint(guidance.text_grammar(so.grammar, param=param), param))
    return found


def _json_value(value: dict[str, Any] | str, param: str) -> Any:
    """vLLM takes the schema as an object or as JSON text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{param} is not valid JSON: {exc}", param=param) from None


def tool_call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """A JSON Schema for one call of one of ``tools``: ``{"name": ..., "arguments": {...}}``.

    Each tool's schema lives under ``$defs``, and its own ``$ref``s are rebased there;
    its root definitions are renamed per tool, so that two tools' ``$defs`` of the same
    name stay apart.
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


# Request fields that may constrain the output (``output_constraint``).
CONSTRAINING = ("response_format", "tools", "grammar", "json_schema", "structured_outputs")


def precheck_constraint(capability: Capability, body: Mapping[str, Any]) -> None:
    """An engine descriptor's refusal, before any load, of an output constraint
    llguidance would not enforce (chat and completion bodies; others have none)."""
    if not any(body.get(key) for key in CONSTRAINING):
        return
    if capability == Capability.CHAT:
        output_constraint(ChatCompletionRequest.model_validate(body))
    elif capability == Capability.COMPLETION:
        output_constraint(CompletionRequest.model_validate(body))
