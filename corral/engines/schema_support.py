"""Which JSON Schemas llama.cpp's grammar converter enforces exactly, in plain Python.

Structured outputs on llama.cpp go through llama-cpp-python's JSON Schema to GBNF
converter (``grammar``), which silently ignores much of JSON Schema: ``minimum`` on
a number, ``uniqueItems``, ``not``, ``if``/``then``, a ``maxLength`` beside a
``pattern``... A schema using them would be "enforced" by a grammar that admits
invalid output. So every schema is first checked node by node against exactly the
keywords the converter honours for that node's shape (mirroring its ``visit``
dispatch), and anything else is a 400 naming the keyword and its JSON path.
Annotations (``title``, ``description``, ``default``...) are stripped, because the
converter trips over nodes that carry nothing else. One leniency: ``oneOf`` is
enforced as ``anyOf``, as the converter does; the unions people write (pydantic's
tagged unions, ``X | None``) have disjoint branches, where the two are the same.

This module imports no engine, so the gateway runs the same check before it loads
a model for a request whose schema would be refused anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import jsonschema

from corral.errors import InvalidRequest, UnsupportedSchema

# JSON Schema's assertion and applicator keywords (all drafts). Any other key is an
# annotation or a vendor extension (``title``, ``discriminator``, ``x-...``): validators
# ignore it, so it is dropped before conversion.
_KEYWORDS = frozenset(
    {
        "type", "enum", "const", "format",
        "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
        "maxLength", "minLength", "pattern",
        "items", "prefixItems", "additionalItems", "maxItems", "minItems", "uniqueItems",
        "contains", "maxContains", "minContains", "unevaluatedItems",
        "properties", "patternProperties", "additionalProperties", "propertyNames",
        "required", "dependentRequired", "dependencies", "dependentSchemas",
        "maxProperties", "minProperties", "unevaluatedProperties",
        "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
        "$ref", "$dynamicRef", "$recursiveRef",
    }
)  # fmt: skip
_DEFINITIONS = ("$defs", "definitions")
# String formats the converter has rules for (the uuid ones ignore the version).
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid3", "uuid4", "uuid5"})
_PATTERN_REFUSED = (
    ("[^", "negated character classes"),
    ("(?", "group modifiers and lookarounds"),
    ('"', "double quotes"),
)


_Children = dict[str, Callable[[], Any]]


# The converter writes each optional repetition as one more nested group: llama.cpp's
# grammar parser compiles about a thousand (1,500 fail to compile) and overflows its
# stack on tens of thousands, killing the worker with every request in it (SIGSEGV on
# ``"maxLength": 32767``). Mandatory repetitions (``minLength``) are flat and safe.
MAX_OPTIONAL_REPEATS = 1000
_QUANTIFIER = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


def prepare(schema: Any, *, param: str) -> dict[str, Any]:
    """Check ``schema`` is valid and fully enforceable; return it without annotations."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"The JSON Schema in {param} must be an object.", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(
            f"{param} is not a valid JSON Schema: {exc.message} (at {exc.json_path}).",
            param=param,
        ) from None
    return _Checker(param).node(schema, "$")


class _Checker:
    """Walks a schema; returns a clean copy, or raises UnsupportedSchema at the first problem."""

    def __init__(self, param: str) -> None:
        self.param = param

    def refuse(self, what: str, path: str) -> UnsupportedSchema:
        return UnsupportedSchema(
            f"{self.param}: {what} at {path} is not supported in structured outputs; the "
            "output could not be constrained to it.",
            param=self.param,
        )

    def node(self, node: Any, path: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise self.refuse(f"the boolean schema {json.dumps(node)}", path)
        keys = {k for k in node if k in _KEYWORDS}
        if node.get("items") in ({}, True) and "prefixItems" not in keys:
            keys.discard("items")  # "any items": the same as no items keyword
        honoured, children = self._shape(node, keys, path)
        extra = sorted(keys - honoured)
        if extra:
            raise self.refuse(f"'{extra[0]}'", path)
        out = {k: node[k] for k in keys if k not in children}
        out.update({k: visit() for k, visit in children.items()})
        for key in _DEFINITIONS:
            if isinstance(node.get(key), dict):
                out[key] = {
                    name: self.node(sub, f"{path}.{key}.{name}") for name, sub in node[key].items()
                }
        return out

    def _shape(self, node: dict[str, Any], keys: set[str], path: str) -> tuple[set[str], _Children]:
        """The keywords the converter honours for this node (its ``visit`` order), and children."""
        kind = node.get("type")
        if "$ref" in keys:
            ref = node["$ref"]
            if not (isinstance(ref, str) and ref.startswith("#/")):
                raise self.refuse(f"the $ref {json.dumps(ref)} (only local #/... refs)", path)
            return {"$ref"}, {}
        for union in ("oneOf", "anyOf"):  # the converter takes the first, as anyOf
            if union in keys:
                return {union}, {union: partial(self.each, node[union], f"{path}.{union}")}
        if isinstance(kind, list):
            return {"type"}, {}
        if "const" in keys or "enum" in keys:
            return {"type", "const" if "const" in keys else "enum"}, {}
        closed = "additionalProperties" in keys and node["additionalProperties"] is not True
        if kind in (None, "object") and ("properties" in keys or closed):
            return self._object(node, path)
        if kind in (None, "array") and ("items" in keys or "prefixItems" in keys):
            return self._array(node, keys, path)
        if kind in (None, "string") and "pattern" in keys:
            self._pattern(node["pattern"], f"{path}.pattern")
            return {"type", "pattern"}, {}
        if kind in (None, "string") and "format" in keys:
            if node["format"] not in _FORMATS:
                raise self.refuse(f"the format {json.dumps(node['format'])}", path)
            return {"type", "format"}, {}
        if kind == "string" and keys & {"minLength", "maxLength"}:
            self._range(node, "minLength", "maxLength", path)
            return {"type", "minLength", "maxLength"}, {}
        if kind is None and keys:
            raise self.refuse(f"'{sorted(keys)[0]}'", path)
        return {"type"} | (set() if closed else {"additionalProperties"}), {}

    def each(self, schemas: list[Any], path: str) -> list[dict[str, Any]]:
        return [self.node(s, f"{path}[{i}]") for i, s in enumerate(schemas)]

    def _object(self, node: dict[str, Any], path: str) -> tuple[set[str], _Children]:
        properties: dict[str, Any] = node.get("properties", {})
        missing = [name for name in node.get("required", []) if name not in properties]
        if missing:
            raise self.refuse(f"the required property '{missing[0]}' missing from properties", path)
        children: _Children = {
            "properties": lambda: {
                name: self.node(sub, f"{path}.properties.{name}")
                for name, sub in properties.items()
            }
        }
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            children["additionalProperties"] = lambda: self.node(
                extra, f"{path}.additionalProperties"
            )
        return {"type", "properties", "required", "additionalProperties"}, children

    def _array(self, node: dict[str, Any], keys: set[str], path: str) -> tuple[set[str], _Children]:
        if "prefixItems" not in keys:
            self._range(node, "minItems", "maxItems", path)
            visit = lambda: self.node(node["items"], f"{path}.items")  # noqa: E731
            return {"type", "items", "minItems", "maxItems"}, {"items": visit}
        if "items" in keys and node["items"] is not False:
            raise self.refuse("'items' beside 'prefixItems'", path)
        # The converter emits the whole tuple: exactly len(prefixItems) items, none after.
        prefix = node["prefixItems"]
        return {"type", "prefixItems", "items"}, {
            "prefixItems": lambda: self.each(prefix, f"{path}.prefixItems")
        }

    def _range(self, node: dict[str, Any], low: str, high: str, path: str) -> None:
        if high in node and node.get(low, 0) > node[high]:
            raise self.refuse(f"{low} greater than {high}", path)
        if high in node:
            self._repeats(node[high] - node.get(low, 0), f"{high} {node[high]}", path)

    def _repeats(self, optional: int, what: str, path: str) -> None:
        if optional > MAX_OPTIONAL_REPEATS:
            raise self.refuse(
                f"{what} ({optional} optional repetitions; llama.cpp's grammar holds at "
                f"most {MAX_OPTIONAL_REPEATS})",
                path,
            )

    def _pattern(self, pattern: str, path: str) -> None:
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise self.refuse("a pattern not anchored with ^ and $", path)
        for text, what in _PATTERN_REFUSED:
            if text in pattern:
                raise self.refuse(f"a pattern with {what}", path)
        if re.search(r"\\[dDwWsSbB]", pattern):
            raise self.refuse(r"a pattern with class escapes (\d, \w, \s...)", path)
        for match in _QUANTIFIER.finditer(pattern):
            low, high = int(match[1]), match[2]
            if high:  # {m,n}; {m} and {m,} add no optional repetitions
                self._repeats(int(high) - low, f"the quantifier {match[0]}", path)
