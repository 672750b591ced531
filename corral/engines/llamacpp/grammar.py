"""JSON Schema -> GBNF for llama.cpp's grammar sampler, refusing what it would not enforce.

The conversion itself is llama-cpp-python's (``llama_cpp.llama_grammar``, a port of
llama.cpp's ``json-schema-to-grammar.py``); ``schema_support`` first refuses any
schema it would not enforce exactly, and strips annotations.

Two rules of the converter's output are replaced (upstream llama.cpp fixed both):
its string ``char`` and its pattern ``dot`` admit raw control characters (and ``dot``
a bare ``"``), which is not JSON, so a random model produced unparseable strings.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from corral.engines.schema_support import prepare
from corral.errors import UnsupportedSchema

__all__ = ["JSON_OBJECT_GRAMMAR", "prepare", "schema_grammar"]

# Any JSON object: llama.cpp's own json.gbnf (what its server uses for json_object).
JSON_OBJECT_GRAMMAR: str = JSON_GBNF

# Converter output rules that are not JSON, and their JSON-safe replacements.
_UNSAFE_RULES = {
    "char": (
        r'char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
        r"[0-9a-fA-F])",
        r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    ),
    "dot": (r"dot ::= [^\x0A\x0D]", r'dot ::= [^"\\\x7F\x00-\x1F]'),
}


def schema_grammar(schema: Any, *, param: str) -> str:
    """A GBNF grammar admitting only JSON valid under ``schema`` (or a 400 naming why not)."""
    prepared = prepare(schema, param=param)
    try:
        grammar = json_schema_to_gbnf(json.dumps(prepared))
    except (AssertionError, AttributeError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(
            f"The JSON Schema in {param} could not be converted to a grammar: {exc}", param=param
        ) from None
    return _fix_rules(grammar)


def _fix_rules(grammar: str) -> str:
    lines = grammar.split("\n")
    for name, (unsafe, safe) in _UNSAFE_RULES.items():
        for i, line in enumerate(lines):
            if line.startswith(f"{name} ::= "):
                # A converter that changed these rules must be looked at again, not patched blind.
                if line != unsafe:
                    raise AssertionError(f"unexpected {name} rule from the converter: {line}")
                lines[i] = safe
    return "\n".join(lines)
