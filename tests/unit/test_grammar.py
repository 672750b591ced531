"""JSON Schema -> GBNF: what is enforced, and what is refused with its place named."""

from typing import Any

import pytest

from corral.engines.llamacpp.grammar import JSON_OBJECT_GRAMMAR, prepare, schema_grammar
from corral.errors import InvalidRequest


def refusal(schema: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        schema_grammar(schema, param="response_format")
    assert info.value.status == 400 and info.value.param == "response_format"
    return info.value.message


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "minimum": 0}, "'minimum' at $"),
        ({"type": "number", "exclusiveMaximum": 1}, "'exclusiveMaximum' at $"),
        ({"type": "integer", "multipleOf": 2}, "'multipleOf' at $"),
        (
            {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
            "'uniqueItems' at $.properties.tags",
        ),
        ({"type": "array", "items": {"type": "string"}, "contains": {}}, "'contains' at $"),
        ({"not": {"type": "string"}}, "'not' at $"),
        ({"if": {"type": "string"}, "then": {"maxLength": 2}}, "'if' at $"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "'patternProperties' at $"),
        ({"type": "object", "minProperties": 1}, "'minProperties' at $"),
        (
            {"type": "object", "properties": {}, "dependentSchemas": {"a": {}}},
            "'dependentSchemas' at $",
        ),
        ({"allOf": [{"type": "object"}]}, "'allOf' at $"),
        (
            {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
            "'maxLength' at $",
        ),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "'type' at $"),
        ({"$ref": "#/$defs/a", "maxLength": 3, "$defs": {"a": {"type": "string"}}}, "'maxLength'"),
        ({"type": "string", "format": "email"}, 'format "email" at $'),
        ({"type": "string", "pattern": "a+"}, "not anchored"),
        ({"type": "string", "pattern": "^[^x]$"}, "negated character classes"),
        ({"type": "string", "pattern": r"^\d+$"}, "class escapes"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "minLength greater than maxLength"),
        ({"properties": {"a": {"$ref": "https://example.com/s.json"}}}, "$.properties.a"),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required property 'a'"),
        ({"type": "array", "items": False}, "boolean schema false at $.items"),
        ({"type": "array", "items": {"type": "integer"}, "prefixItems": [{}]}, "'items' beside"),
        ({"$defs": {"x": {"type": "integer", "maximum": 3}}, "type": "string"}, "$.$defs.x"),
        ({"type": "string", "maxLength": 32767}, "maxLength 32767 (32767 optional"),
        ({"type": "string", "minLength": 10, "maxLength": 1011}, "(1001 optional"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 2000}, "maxItems 2000"),
        ({"type": "string", "pattern": "^a{1,3000}$"}, "the quantifier {1,3000}"),
    ],
)
def test_what_the_converter_would_ignore_is_refused_by_name_and_path(
    schema: dict[str, Any], named: str
) -> None:
    message = refusal(schema)
    assert named in message and message.startswith("response_format")


def test_invalid_json_schema_is_refused() -> None:
    message = refusal({"type": "object", "properties": {"a": {"type": "strin"}}})
    assert "not a valid JSON Schema" in message and "$.properties.a.type" in message
    assert "must be an object" in refusal(["not", "a", "schema"])


def test_annotations_and_vendor_keys_are_dropped_not_refused() -> None:
    schema = {
        "title": "M",
        "type": "object",
        "description": "d",
        "x-vendor": 1,
        "properties": {
            "title": {"type": "string", "title": "Title", "default": "x"},
            "any": {"description": "anything"},
        },
        "required": ["title"],
        "additionalProperties": False,
    }
    assert prepare(schema, param="p") == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "any": {}},
        "required": ["title"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}}},
        {"type": "array", "items": {"enum": ["x", 1, None]}, "minItems": 1, "maxItems": 3},
        {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        {"oneOf": [{"const": "a"}, {"const": "b"}]},
        {"type": ["string", "boolean"]},
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": "^[A-Z]{2,3}-[0-9]+$"},
        {"type": "string", "minLength": 5000, "maxLength": 6000},  # 1,000 optional: the bound
        {"type": "string", "pattern": r"^a{1000}b{3,}c\{1,5000\}$"},  # none optional
        {"prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False},
        {"type": "array", "items": {}},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {
            "type": "object",
            "properties": {"next": {"$ref": "#/$defs/Node"}},
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/Node"}},
                    "required": ["v"],
                }
            },
        },
    ],
)
def test_supported_schemas_convert(schema: dict[str, Any]) -> None:
    grammar = schema_grammar(schema, param="response_format")
    assert "root ::= " in grammar


def test_json_strings_exclude_raw_control_characters() -> None:
    """The converter's own rule admits raw newlines inside strings, which is not JSON."""
    grammar = schema_grammar({"type": "string", "pattern": "^a.$"}, param="p")
    grammar += schema_grammar({"type": "string"}, param="p")
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in grammar
    assert r'dot ::= [^"\\\x7F\x00-\x1F]' in grammar
    assert r"[^\x0A\x0D]" not in grammar and 'char ::= [^"\\] |' not in grammar
    assert "root   ::= object" in JSON_OBJECT_GRAMMAR  # json_object: an object, not any value
