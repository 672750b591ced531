"""Every ``corral`` help page names arguments and flags as a Unix tool would (issue 14)."""

from __future__ import annotations

import re

import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from corral.cli.main import app


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(group: TyperGroup, prefix: list[str]) -> None:
        for name, command in group.commands.items():
            paths.append([*prefix, name])
            if isinstance(command, TyperGroup):
                walk(command, [*prefix, name])

    assert isinstance(root, TyperGroup)
    walk(root, [])
    return paths


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_no_help_page_shows_braced_placeholders_or_bool_after_a_flag() -> None:
    paths = _command_paths()
    assert len(paths) > 20  # every command and sub-command, not just the root
    for path in paths:
        shown = _help(path)
        assert "<bool>" not in shown, path
        assert not re.search(r"\{[a-z_]+\}", shown), (path, shown)


def test_arguments_are_upper_case_and_optional_ones_bracketed() -> None:
    assert "Usage: root show [OPTIONS] MODEL" in _help(["show"])
    assert "Usage: root rm [OPTIONS] MODELS..." in _help(["rm"])
    assert re.search(r"Usage: root run \[OPTIONS\] MODEL \[PROMPT\]", _help(["run"]))


def test_flags_that_take_a_value_still_say_what_it_is() -> None:
    shown = _help(["show"])
    assert re.search(r"--home\s+<path>", shown)
    assert re.search(r"--json\s+Print JSON", shown)
