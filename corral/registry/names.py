"""Model names, Ollama style: ``name:tag`` with ``latest`` as the default tag."""

from __future__ import annotations

import re

from corral.errors import InvalidModelName, ModelNotFound

DEFAULT_TAG = "latest"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def canonical_name(name: str) -> str:
    """``demo`` -> ``demo:latest``; validates characters so names are safe as paths."""
    base, _, tag = name.strip().partition(":")
    tag = tag or DEFAULT_TAG
    if not _NAME.match(base) or ".." in base.split("/") or not _TAG.match(tag):
        raise InvalidModelName(
            f"Invalid model name {name!r}: use name[:tag] with letters, digits, '.', '_', "
            "'-' (and '/' in the name).",
            param="model",
        )
    return f"{base}:{tag}"


def canonical_or_not_found(name: str) -> str:
    """For lookups: a name that cannot be valid names no model (404, not 400)."""
    try:
        return canonical_name(name)
    except InvalidModelName:
        raise ModelNotFound(name) from None
