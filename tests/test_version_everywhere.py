"""``--version`` after any command (issue 19): ``parley node --version`` answers like
``parley --version``, before the command's own arguments are checked or anything runs."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import typer

from daemon.cli import app, main


def _leaf_paths() -> list[list[str]]:
    import click

    root = typer.main.get_command(app)
    paths: list[list[str]] = []
    pending: list[tuple[list[str], click.Command]] = [([], root)]
    while pending:
        path, command = pending.pop()
        paths.append(path)
        if isinstance(command, click.Group):
            pending.extend(([*path, name], sub) for name, sub in command.commands.items())
    return sorted(paths)


def test_version_works_after_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    expected = f"parley {version('parley')}"
    paths = _leaf_paths()
    assert ["node"] in paths and ["caption"] in paths and ["peers", "list"] in paths
    for path in paths:
        # caption's FILES argument is required: --version must answer before that is checked.
        try:
            main([*path, "--version"])
        except SystemExit as done:
            assert done.code in (0, None), path
        assert capsys.readouterr().out.strip() == expected, path
