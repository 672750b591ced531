"""Turn a raw request body into a validated wire model, or a clear InvalidRequest.

FastAPI's own validation answers 422 with its own body shape; the APIs Corral
speaks answer 400 with theirs, naming the offending parameter. Both the gateway and
the worker parse through here so they agree on what is valid.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body; anything else is an InvalidRequest."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "The body must be a JSON object."
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {type(value).__name__}.")
    return value


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
