"""How ``corral --help`` names arguments and flags.

Typer 0.29 prints a required argument as ``{model}`` in the usage line and ``<bool>``
after every flag, as though a flag took a value (issue 14). This module holds the
command and group classes every ``corral`` command is built with, so that

- arguments read as in any Unix tool: ``corral show MODEL``, ``[NAME]`` when optional;
- a flag shows no value placeholder at all.

They change only what help prints; parsing is typer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_F = TypeVar("_F", bound=Callable[..., Any])


def _tidy(params: list[Any]) -> None:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # rendered as nothing in the type column
        elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()


def _usage(param: TyperArgument) -> str:
    name = param.metavar or (param.name or "").upper()
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


class Command(TyperCommand):
    """A command whose help says ``MODEL``, not ``{model}``, and no ``<bool>``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # adds --help and the completion flags
        _tidy(params)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        pieces += [_usage(p) for p in self.get_params(ctx) if isinstance(p, TyperArgument)]
        return pieces


class Group(TyperGroup):
    """A command group with the same help rendering as :class:`Command`."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _tidy(params)
        return params


class App(typer.Typer):
    """``typer.Typer`` whose commands and groups use the classes above by default."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[_F], _F]:
        kwargs.setdefault("cls", Command)
        decorate: Callable[[_F], _F] = super().command(*args, **kwargs)
        return decorate
