"""Every positional argument of every command shows its help text (issue 19, rough edge 1).

typer 0.20 with click 8.5 drops the help of arguments from ``--help``; pyproject.toml keeps
click below 8.5 until the typer that Flower allows handles it.
"""

from __future__ import annotations

import re

import click
import typer.main
from typer.testing import CliRunner

from daemon.cli import app


def commands_with_arguments() -> list[tuple[list[str], list[click.Argument]]]:
    found = []

    def walk(command: click.Command, path: list[str]) -> None:
        arguments = [param for param in command.params if isinstance(param, click.Argument)]
        if arguments:
            found.append((path, arguments))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def flat(text: str) -> str:
    """Help text without the panel borders and line wrapping rich adds."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


def test_every_argument_has_help_and_help_shows_it():
    found = commands_with_arguments()
    assert [path for path, _ in found if path == ["enroll"]], "enroll takes FILES"
    runner = CliRunner()
    for path, arguments in found:
        output = flat(runner.invoke(app, [*path, "--help"], prog_name="parley").output)
        for argument in arguments:
            help_text = getattr(argument, "help", None)
            assert help_text, f"parley {' '.join(path)}: argument {argument.name} has no help"
            assert flat(help_text) in output, (path, argument.name, output)
