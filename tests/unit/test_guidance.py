"""Output constraints on llguidance: what compiles, and what is refused by name and place."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from corral.engines import guidance
from corral.errors import InvalidRequest

ACCEPTED = {
    "oneOf": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "anyOf": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
    "ref-defs": {
        "$defs": {"P": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/P"}, "b": {"$ref": "#/$defs/P/properties/x"}},
    },
    "recursive": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            }
        },
        "$ref": "#/$defs/node",
    },
    "pattern": {"type": "string", "pattern": "^[a-z]{2,5}-[0-9]+$"},
    "formats": {
        "type": "object",
        "properties": {
            f: {"type": "string", "format": f}
            for f in ("date", "time", "date-time", "email", "uuid", "ipv4", "uri")
        },
    },
    "numeric-bounds": {
        "type": "object",
        "properties": {
            "i": {"type": "integer", "minimum": -3, "maximum": 900},
            "n": {"type": "number", "exclusiveMinimum": 0, "maximum": 1.5},
            "m": {"type": "integer", "multipleOf": 5},
        },
    },
    "length-bounds": {"type": "string", "minLength": 2, "maxLength": 32767},
    "enum-const": {
        "type": "object",
        "properties": {"e": {"enum": [1, "a", None]}, "c": {"const": "k"}},
    },
    "nested-arrays": {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        "minItems": 1,
    },
    "additionalProperties": {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": {"type": "integer"},
    },
    "annotations": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "t",
        "description": "d",
        "type": "object",
        "properties": {"a": {"type": "string", "default": "x", "examples": ["y"], "x-vendor": 1}},
    },
    "allOf": {
        "allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]
    },
}


@pytest.mark.parametrize("schema", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_real_world_schema_shapes_compile(schema: dict[str, Any]) -> None:
    grammar = json.loads(guidance.json_schema_grammar(schema, param="response_format"))
    compiled = dict(grammar["grammars"][0]["json_schema"])
    assert compiled.pop("x-guidance") == guidance.JSON_OPTIONS
    assert compiled == guidance.close_objects(schema)


def refusal(schema: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        guidance.json_schema_grammar(schema, param="response_format")
    assert info.value.status == 400 and info.value.param == "response_format"
    return info.value


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (
            {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
            "'uniqueItems' at $.properties.tags",
        ),
        ({"not": {"type": "string"}}, "'not' at $"),
        ({"if": {"type": "string"}, "then": {"maxLength": 2}}, "'if' at $, 'then' at $"),
        ({"type": "array", "contains": {"type": "integer"}}, "'contains' at $"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "'propertyNames' at $"),
        ({"type": "string", "format": "no-such-format"}, "Unknown format: no-such-format"),
        ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
        ({"type": "strin"}, "not a valid JSON Schema"),
        ([{"type": "string"}], "must be an object"),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(schema: Any, named: str) -> None:
    assert named in refusal(schema).message


def test_hostile_schemas_are_refused_or_bounded_never_hung() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(5000):
        deep = {"type": "array", "items": deep}
    started = time.monotonic()
    assert "nested too deeply" in refusal(deep).message
    for schema in (
        {"type": "string", "pattern": "^((a|b){1,900}){1,900}$"},
        {"enum": [f"value-{i}" for i in range(50_000)]},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000},
    ):
        try:
            guidance.json_schema_grammar(schema, param="response_format")
        except InvalidRequest as exc:
            assert exc.param == "response_format"
    assert time.monotonic() - started < 30


def test_grammars_regexes_and_choices() -> None:
    assert "start:" in guidance.text_grammar('root ::= "a" | "b"', param="grammar")  # GBNF
    assert "start:" in guidance.text_grammar('start: "a"+', param="grammar")  # Lark
    with pytest.raises(InvalidRequest, match="does not parse") as info:
        guidance.text_grammar("root ::= [", param="grammar")
    assert info.value.param == "grammar"
    with pytest.raises(InvalidRequest, match=r"undefined|unknown|not found"):
        guidance.text_grammar("start: missing_rule", param="grammar")
    guidance.regex_grammar(r"\d{3}-[a-z]+", param="regex")
    with pytest.raises(InvalidRequest):
        guidance.regex_grammar("(unclosed", param="regex")
    assert '"it\\"s"' in guidance.choice_grammar(['it"s', "b"], param="choice")
    with pytest.raises(InvalidRequest):
        guidance.choice_grammar([], param="choice")


def test_objects_that_list_their_properties_get_no_others() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"const": {"properties": {}}}}},
            "free": {"type": "object"},
            "open": {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
        },
    }
    closed = guidance.close_objects(schema)
    assert closed["additionalProperties"] is False
    inner = closed["properties"]["properties"]
    assert inner["additionalProperties"] is False
    assert inner["properties"]["x"] == {"const": {"properties": {}}}  # data is untouched
    assert "additionalProperties" not in closed["properties"]["free"]  # lists nothing
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the caller's schema is not changed


def test_objects_built_of_parts_stay_open() -> None:
    base = {"type": "object", "properties": {"name": {"type": "string"}}}
    schema = {
        "definitions": {"base": base, "alone": base},
        "type": "object",
        "properties": {
            "a": {"allOf": [{"$ref": "#/definitions/base"}, {"properties": {"aws": {}}}]},
            "b": {"properties": {"x": {}}, "required": ["x", "y"]},  # y comes from elsewhere
            "c": {"$ref": "#/definitions/alone"},
        },
    }
    closed = guidance.close_objects(schema)
    assert "additionalProperties" not in closed["definitions"]["base"]  # a part of "a"
    assert closed["definitions"]["alone"]["additionalProperties"] is False
    assert closed["properties"]["a"]["allOf"][1] == {"properties": {"aws": {}}}
    assert "additionalProperties" not in closed["properties"]["b"]
    guidance.json_schema_grammar(schema, param="p")  # and "a" stays satisfiable


def test_strict_false_leaves_out_what_cannot_be_enforced() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "id": {"oneOf": [{"type": "integer"}, {"type": "number"}]},  # overlapping
        },
    }
    assert "uniqueItems" in refusal(schema).message
    grammar = guidance.json_schema_grammar(schema, param="response_format", strict=False)
    assert json.loads(grammar)["grammars"][0]["json_schema"]["x-guidance"]["lenient"] is True
    overlapping = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    assert "write anyOf" in refusal(overlapping).message
    guidance.json_schema_grammar(overlapping, param="response_format", strict=False)
