"""README's command table lists every command and every flag (``--home`` is described once, in
"Where data lives"). A command added without its row, or a flag without its mention, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer.main

from daemon.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
GLOBAL_FLAGS = {"--home", "--help"}


def leaf_commands(command: click.Command, path: list[str]):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from leaf_commands(sub, [*path, name])
    else:
        yield path, command


def table_row(rows: list[str], path: list[str]) -> str | None:
    """The row of ``parley PATH``; a group's row may list its subcommands (``peers list`` /
    ``trust KEY``)."""
    for row in rows:
        head = re.split(r"(?<!\\)\|", row)[1]  # the first cell (``\|`` is a literal bar)
        if f"`parley {' '.join(path)}" in head:
            return row
        if len(path) > 1 and f"`parley {path[0]} " in head and f"`{path[-1]}" in head:
            return row
        if len(path) > 1 and f"`parley {path[0]} {path[1]}" in head:
            return row
    return None


def test_every_command_and_flag_is_in_the_readme_table():
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `parley")]
    problems = []
    for path, command in leaf_commands(typer.main.get_command(app), []):
        row = table_row(rows, path)
        if row is None:
            problems.append(f"parley {' '.join(path)}: no row in README's command table")
            continue
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            flags = [name for name in param.opts if name.startswith("--")]
            if flags and not set(flags) & GLOBAL_FLAGS and not any(f in row for f in flags):
                problems.append(f"parley {' '.join(path)}: {flags[0]} is not in its row")
    assert problems == []
