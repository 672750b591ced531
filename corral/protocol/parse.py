"""Turn a raw request body into a validated wire model, or a clear InvalidRequest.

FastAPI's own validation answers 422 with its own body shape; the APIs Corral
speaks answer 400 with theirs, naming the offending parameter. Both the gateway and
the worker parse through here so they agree on what is valid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)

# No API Corral speaks nests anywhere near this deep; a body that does is an attack on
# the parser (Python's would raise RecursionError at ~1000 levels, a 500).
MAX_DEPTH = 128
# A \uD800-\uDFFF escape: JSON allows it, but alone (not as a pair) it decodes to a
# string no UTF-8 encoder accepts, which failed later, far from the request (a 500).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body; anything else is an InvalidRequest.

    Refused here, so that no later step meets them: bodies nested deeper than
    ``MAX_DEPTH``, and strings with lone UTF-16 surrogates (not valid Unicode).
    """
    if not raw.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "The body must be a JSON object."
        ) from None
    except RecursionError:
        raise too_deep() from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(value).__name__}.")
    check_parsed(raw, value)
    return value


def check_parsed(raw: bytes, value: Any) -> None:
    """Refuse a parsed JSON value nested deeper than ``MAX_DEPTH`` or holding a lone
    surrogate. Both checks walk the value, so they run only when ``raw``, the bytes it
    was parsed from, says they may fail."""
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(value)
    if _SURROGATE_ESCAPE.search(raw):
        _check_unicode(value)


def too_deep() -> InvalidRequest:
    return InvalidRequest(f"The JSON body is nested more than {MAX_DEPTH} levels deep.")


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise too_deep()
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        else:
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))


def _check_unicode(value: Any) -> None:
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            _check_string(node, path or "body")
        elif isinstance(node, dict):
            for key, item in node.items():
                _check_string(key, path or "body")
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(node, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))


def _check_string(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = f"\\u{ord(text[exc.start]):04x}"
        raise InvalidRequest(
            f"Invalid value for '{path}': it contains {bad}, a lone UTF-16 surrogate, "
            "which is not valid Unicode.",
            param=path,
        ) from None


def parse_body(raw: bytes, model: type[M]) -> M:
    """Validate a raw JSON body against ``model``."""
    return validate(parse_json_object(raw), model)


def validate(data: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid_request(exc) from None


def _invalid_request(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    param = _param_path(first["loc"])
    if first["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    given = first.get("input")
    shown = json.dumps(given)[:80] if _jsonable(given) else repr(given)[:80]
    return InvalidRequest(
        f"Invalid value for '{param}': {first['msg']} (got {shown}).", param=param
    )


def _param_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "role")`` -> ``messages[0].role``; drops union-branch labels."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_type_label(part):
            path += ("." if path else "") + part
    return path or "body"


def _is_type_label(part: str) -> bool:
    # pydantic adds the union member tried (e.g. "str", "list[int]") to the location.
    return (
        part in {"str", "int", "float", "bool", "dict", "none"}
        or "[" in part
        or (part[:1].isupper() and part.isidentifier() and "-" not in part)
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def check_counts(payload: Mapping[str, Any], max_messages: int, max_tools: int) -> None:
    """Refuse a chat with more messages or tools than the server takes (400 naming which).

    Every message and tool goes through the chat template, in the worker, before any
    token is counted: a body of 100,000 tiny messages would occupy it long before the
    context check could refuse it.
    """
    for param, most in (("messages", max_messages), ("tools", max_tools)):
        items = payload.get(param)
        if isinstance(items, list) and len(items) > most:
            raise InvalidRequest(
                f"Too many {param}: {len(items):,}, and this server takes at most {most:,} "
                f"(CORRAL_MAX_{param.upper()}).",
                param=param,
            )
