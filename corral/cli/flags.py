"""``corral serve``'s flags, made from the settings model and the engines' parameters.

Every setting is a flag (``keep_alive`` is ``--keep-alive``), and so is every
parameter of a built-in engine (``--threads``, ``--slots``...), each with its default
and its ``CORRAL_*`` variable in ``--help``. A flag's value is passed on as text and
checked exactly as the environment variable's would be, so both give the same errors.
Written once here, the list cannot drift from the settings again (issue 14: the README
promised a flag per setting; ``serve`` had nine).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, get_args

import typer
from pydantic.fields import FieldInfo

from corral.settings import Settings, env_name

# Flags whose names predate the generated ones, kept so that scripts keep working.
_NAMES = {"demo_model": "--demo/--no-demo", "insecure": "--insecure/--no-insecure"}


def engine_fields() -> dict[str, FieldInfo]:
    """The built-in engines' parameters (a plugin's are set through ``CORRAL_*``)."""
    from corral.engines.catalog import BUILTIN, load_object

    fields: dict[str, FieldInfo] = {}
    for path in BUILTIN:
        for name, field in load_object(path, "descriptor").params_model.model_fields.items():
            fields.setdefault(name, field)
    return fields


def _is_bool(field: FieldInfo) -> bool:
    return field.annotation is bool or (
        bool in get_args(field.annotation) and len(get_args(field.annotation)) == 2
    )


def _option(name: str, field: FieldInfo, panel: str) -> Any:
    default = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(default, list | tuple):
        shown = ",".join(map(str, default)) or "none"
    else:
        shown = "unset" if default is None else str(default)
    # Parentheses, not brackets: rich reads [...] as markup and drops it.
    help_text = f"{field.description or ''} (default: {shown}; {env_name(name)})".strip()
    if _is_bool(field):
        decl = _NAMES.get(name, f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}")
        option = typer.Option(decl, help=help_text, show_default=False, rich_help_panel=panel)
        return Annotated[bool | None, option]
    decl = f"--{name.replace('_', '-')}"
    option = typer.Option(
        decl, help=help_text, show_default=False, metavar="VALUE", rich_help_panel=panel
    )
    return Annotated[str | None, option]


def with_generated_flags(
    run: Callable[[dict[str, Any], dict[str, Any]], None],
) -> Callable[..., None]:
    """A function whose keyword parameters are every setting and engine parameter;
    it calls ``run(setting_flags, engine_flags)`` with the ones given (None if not)."""
    settings = dict(Settings.model_fields)
    engines = {n: f for n, f in engine_fields().items() if n not in settings}

    def serve(**given: Any) -> None:
        run(
            {n: given.get(n) for n in settings},
            {n: given.get(n) for n in engines},
        )

    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=_option(name, field, panel),
        )
        for fields, panel in ((settings, "Settings"), (engines, "Engine parameters"))
        for name, field in fields.items()
    ]
    serve.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    serve.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return serve
