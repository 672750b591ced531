"""Render chat messages into a prompt with the model's own jinja2 chat template.

GGUF files carry the template their model was trained with (``tokenizer.chat_template``);
it is rendered the way transformers renders it (sandboxed jinja2, ``trim_blocks``,
``lstrip_blocks``, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps
non-ASCII), so prompts match what the model saw in training.

Fallback, for models without a template: ChatML (``<|im_start|>role ... <|im_end|>``),
the same default llama.cpp's server uses. It is documented in the README because a
base model prompted with the wrong template produces poor answers.

A template that never reads ``tools`` (the fallback included) gets tools, tool calls
and tool results written into the messages in the Hermes convention instead
(``tool_prompt``), so that they reach the model whatever the template.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.engines import tool_prompt
from corral.errors import ChatTemplateError

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML_FALLBACK
        self.is_fallback = source is None
        self._template = _compile(self.source)
        self.renders_tools = "tools" in _variables(self.source)
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        if not self.renders_tools and (tools or tool_prompt.mentions_tools(messages)):
            messages, tools = tool_prompt.inline_tools(messages, tools or []), None
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                tools=list(tools) if tools else None,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(
                f"The model's chat template rejected the messages: {exc}"
            ) from exc


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


@lru_cache(maxsize=16)
def _variables(source: str) -> frozenset[str]:
    """The variables a template reads from its context."""
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    return frozenset(jinja2.meta.find_undeclared_variables(env.parse(source)))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)
