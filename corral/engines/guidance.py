"""Structured output grammars on llguidance, for every engine: JSON Schema, regex, Lark, GBNF.

llguidance is the constrained-decoding library behind OpenAI's structured outputs,
vLLM, SGLang and llama.cpp's own ``--llguidance`` build. It compiles a JSON Schema
(``oneOf``, ``$ref``, numeric bounds, ``pattern``, ``format``...), a regular
expression or a Lark grammar into one grammar format, and then, per request, a
matcher that gives the set of tokens allowed next. This module is the engine-neutral
half: it turns what a request asks for into an llguidance grammar (a string an engine
hands to ``LLMatcher``) and refuses, with a 400 naming the keyword and where it is,
what llguidance would not enforce. One departure from JSON Schema, shared with
llama.cpp and Ollama: an object that lists its properties gets no others unless the
schema allows them (``close_objects``). The gateway calls it before a model is loaded, the
worker again when it builds the request, so both give the same answer.

Every compile is bounded (``LIMITS``): a hostile schema exhausts its fuel and is a
400, it never hangs or crashes a worker (issue 13: ``"maxLength": 32767`` used to kill
the worker through llama.cpp's recursive grammar parser).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jsonschema
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from llguidance.gbnf_to_lark import any_to_lark

from corral.errors import InvalidRequest, UnsupportedSchema

if TYPE_CHECKING:  # a typing-only name in llguidance's stubs
    from llguidance._lib import JsonCompileOptions

# The JSON a model may write under a schema: items and keys separated as Python's
# json.dumps does, and between tokens either nothing, one space, or a newline with up
# to 20 spaces or tabs of indent (llama.cpp's rule). Unbounded whitespace would let a
# model pad forever without ever breaking the schema.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": True,
    "whitespace_pattern": r"(?: |\n[ \t]{0,20})?",
}
LENIENT_JSON_OPTIONS: JsonCompileOptions = {
    **JSON_OPTIONS,
    "lenient": True,
    "coerce_one_of": True,
}
# Bounds on compiling one grammar and on each token's mask: about 20 ms of lexer work
# to build, 15 ms per step at worst (llguidance's speeds), the rest its defaults.
LIMITS = LLParserLimits(
    initial_lexer_fuel=1_000_000,
    step_lexer_fuel=200_000,
    step_max_items=50_000,
    max_grammar_size=500_000,
    verbose_errors=False,
)
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")


def json_schema_grammar(schema: Any, *, param: str, strict: bool = True) -> str:
    """An llguidance grammar admitting only JSON valid under ``schema``, or a 400.

    ``strict=False`` is OpenAI's ``"strict": false``, asked for explicitly: keywords
    llguidance cannot enforce (``uniqueItems``, ``not``, ``if``...) are left out of the
    grammar instead of refused, and ``oneOf`` is held as ``anyOf``. The reply then
    follows the rest of the schema, best effort on those, as OpenAI's non-strict mode.
    """
    if not isinstance(schema, dict):
        raise InvalidRequest(f"The JSON Schema in {param} must be an object.", param=param)
    try:
        # No format checks: a pattern is checked by llguidance's regex syntax (Rust's,
        # with \p{...} classes), which is the one that runs, not Python's.
        jsonschema.validators.validator_for(schema).check_schema(  # type: ignore[call-arg]
            schema, format_checker=None
        )
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(
            f"{param} is not a valid JSON Schema: {exc.message} (at {exc.json_path}).",
            param=param,
        ) from None
    except RecursionError:
        raise InvalidRequest(
            f"The JSON Schema in {param} is nested too deeply.", param=param
        ) from None
    try:
        closed = json.dumps(close_objects(schema))
        options = JSON_OPTIONS if strict else LENIENT_JSON_OPTIONS
        grammar = LLMatcher.grammar_from_json_schema(closed, defaults=options)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{param} is not a valid JSON Schema: {exc}", param=param) from None
    _validate(grammar, param, lambda error: _schema_refusal(schema, param, error))
    return grammar


def close_objects(schema: Any) -> Any:
    """``additionalProperties: false`` on each object that lists its properties and says
    nothing of others, as llama.cpp's converter, Ollama and XGrammar's strict mode do.

    JSON Schema allows unlisted keys by default, but nobody who lists an object's
    properties wants a model to invent more, and a model that does can write keys until
    it runs out of tokens. Output stays valid under the schema as sent. Objects built
    of parts are left open: ``allOf`` branches and the definitions they refer to, and
    objects beside a composition or ``$ref``, or requiring a property they do not list.
    """
    return _close(schema, _parts(schema), "#", 0)


def _parts(schema: Any) -> set[str]:
    """The ``$ref`` targets that some ``allOf`` combines with other parts."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            branches = node.get("allOf")
            for branch in branches if isinstance(branches, list) else []:
                if isinstance(branch, dict) and isinstance(branch.get("$ref"), str):
                    found.add(branch["$ref"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _close(node: Any, parts: set[str], pointer: str, depth: int) -> Any:
    if depth > 256 or not isinstance(node, dict):  # check_schema refused deeper nesting
        return node
    out = dict(node)
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {
                name: _close(v, parts, f"{pointer}/{key}/{name}", depth + 1)
                for name, v in value.items()
            }
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [
                _close(v, parts, f"{pointer}/{key}/{i}", depth + 1) for i, v in enumerate(value)
            ]
        elif key in _SCHEMA_VALUES:
            out[key] = _close(value, parts, f"{pointer}/{key}", depth + 1)
    properties = node.get("properties")
    required = node.get("required", [])
    if (
        isinstance(properties, dict)
        and pointer not in parts
        and not _OPEN_KEYS & node.keys()
        and isinstance(required, list)
        and all(name in properties for name in required)
    ):
        out["additionalProperties"] = False
    return out


# Where a schema holds schemas (``allOf`` left out on purpose); other keys hold data
# (``const``, ``enum``, ``default``...) and are never touched.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "prefixItems", "items"})
_SCHEMA_VALUES = frozenset(
    {"items", "additionalItems", "additionalProperties", "contains", "not", "if", "then", "else"}
)
# Keywords that say what an object's unlisted properties may be, or may add properties
# from elsewhere (an object built of parts is left open, as with allOf).
_OPEN_KEYS = frozenset(
    {
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "$ref",
        "if",
        "dependentSchemas",
    }
)


def any_json_object_grammar() -> str:
    """``response_format: json_object`` and Ollama's ``format: "json"``: any JSON object."""
    return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)


def regex_grammar(pattern: str, *, param: str) -> str:
    grammar = LLMatcher.grammar_from_regex(pattern)
    _validate(grammar, param, lambda error: f"The regular expression in {param}: {error}")
    return grammar


def choice_grammar(choices: Sequence[str], *, param: str) -> str:
    """Exactly one of ``choices`` (vLLM's ``choice``)."""
    if not choices:
        raise InvalidRequest(f"{param} needs at least one choice.", param=param)
    lark = "start: " + " | ".join(json.dumps(choice) for choice in choices)
    grammar = LLMatcher.grammar_from_lark(lark)
    _validate(grammar, param, lambda error: f"The choices in {param}: {error}")
    return grammar


def text_grammar(text: str, *, param: str) -> str:
    """A grammar written out: Lark (llguidance's syntax) or llama.cpp's GBNF."""
    try:
        lark = any_to_lark(text)
    except Exception as exc:  # the converter's own parse errors carry no common base
        raise InvalidRequest(f"The grammar in {param} does not parse: {exc}", param=param) from None
    grammar = LLMatcher.grammar_from_lark(lark)
    _validate(grammar, param, lambda error: f"The grammar in {param}: {error}")
    return grammar


def _validate(grammar: str, param: str, explain: Any) -> None:
    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar, None, limits=LIMITS)
    if failed:
        raise UnsupportedSchema(explain(messages[0] if messages else "invalid"), param=param)


def _schema_refusal(schema: dict[str, Any], param: str, error: str) -> str:
    if "oneOf constraints are not supported" in error:
        return (
            f"The JSON Schema in {param} uses 'oneOf' at {_place(schema, 'oneOf') or '$'} with "
            "branches a value could match more than once, which constrained decoding cannot "
            'enforce exactly; write anyOf, or send "strict": false to hold it as anyOf.'
        )
    found = _UNIMPLEMENTED.search(error)
    if not found:
        return f"The JSON Schema in {param} cannot be enforced: {error.strip()}"
    keys = [key.strip().strip('"') for key in found.group(1).split(",") if key.strip()]
    places = ", ".join(f"'{key}' at {_place(schema, key) or '$'}" for key in keys)
    return (
        f"The JSON Schema in {param} uses {places}, which constrained decoding cannot "
        'enforce; remove it, or send "strict": false to have the rest enforced.'
    )


def _place(node: Any, key: str, path: str = "$", depth: int = 0) -> str | None:
    """The JSON path of the first schema object carrying ``key``."""
    if depth > 64:
        return None
    if isinstance(node, dict):
        if key in node:
            return path
        items = node.items()
    elif isinstance(node, list):
        items = ((f"[{i}]", v) for i, v in enumerate(node))  # type: ignore[assignment]
    else:
        return None
    for name, child in items:
        step = name if str(name).startswith("[") else f".{name}"
        if (found := _place(child, key, path + step, depth + 1)) is not None:
            return found
    return None


class CompiledGrammars:
    """Grammars compiled for one model's tokenizer, kept by text (``size`` of them), so a
    schema sent again, or checked on the request's thread and then used by the engine,
    compiles once. ``tokenizer`` is called when the first grammar compiles (an engine may
    still be building it as the model loads)."""

    def __init__(self, tokenizer: Callable[[], LLTokenizer], size: int = 32) -> None:
        self._tokenizer = tokenizer
        self._size = size
        self._lock = threading.Lock()
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()

    def matcher(self, grammar: str, *, param: str) -> LLMatcher:
        """A fresh matcher for ``grammar``; a 400 naming ``param`` if it does not compile."""
        with self._lock:
            proto = self._compiled.get(grammar)
            if proto is None:
                proto = self._compile(grammar, param)
                self._compiled[grammar] = proto
                while len(self._compiled) > self._size:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(grammar)
            return proto.deep_copy()

    def _compile(self, grammar: str, param: str) -> LLMatcher:
        matcher = LLMatcher(self._tokenizer(), grammar, log_level=0, limits=LIMITS)
        if matcher.is_error():
            raise UnsupportedSchema(
                f"The output constraint in {param} does not compile for this model: "
                f"{matcher.get_error()}",
                param=param,
            )
        return matcher
