"""A command template: a server's command line with ``${MACRO}`` placeholders.

The idea is llama-swap's: a model says how to start the server that serves it, and
the gateway fills in what only it knows (the port, the file). The template is split
into arguments as a POSIX shell would (``shlex``) *before* the macros are filled in,
so a model path with spaces stays one argument and nothing is ever run by a shell.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

MACROS: dict[str, str] = {
    "PORT": "the port the server must listen on (loopback)",
    "HOST": "the address it must listen on (127.0.0.1)",
    "MODEL_PATH": "the model's file, or its directory for a multi-file model",
    "MODEL_DIR": "the directory that holds the model's files",
    "MODEL_NAME": "the model's Corral name (name:tag)",
    "SLOTS": "requests the gateway sends at once (llama-server's --parallel)",
    "CONTEXT": "context tokens per request",
    "CONTEXT_TOTAL": "context tokens for all slots together (llama-server's --ctx-size)",
    "THREADS": "CPU threads",
    "PYTHON": "the Python that runs Corral (for a server that is a Python module)",
}
_MACRO = re.compile(r"\$\{([^}]*)\}")


class TemplateError(ValueError):
    """A template that cannot become a command line, saying why."""


def check(template: str) -> list[str]:
    """The template's arguments, unexpanded; a TemplateError for an empty template,
    unbalanced quotes or an unknown macro."""
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise TemplateError(f"the command cannot be split into arguments: {exc}") from None
    if not args:
        raise TemplateError("the command is empty")
    for arg in args:
        for name in _MACRO.findall(arg):
            if name not in MACROS:
                known = ", ".join("${" + m + "}" for m in MACROS)
                raise TemplateError(f"unknown macro ${{{name}}} (known: {known})")
    return args


def expand(template: str, values: Mapping[str, str]) -> tuple[str, ...]:
    """The command line, each macro replaced by its value."""
    return tuple(_MACRO.sub(lambda m: values[m.group(1)], arg) for arg in check(template))
