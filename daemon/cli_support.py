"""What every command module shares: exit codes, the one-line failure, the home, JSON output.

Command modules (``daemon/*_cli.py``, :mod:`simulations.cli`) import these from here, and
:mod:`daemon.cli` imports the command modules, so nothing imports :mod:`daemon.cli` back.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from rich.console import Console

from daemon.errors import EXIT_NOT_RUNNING, EXIT_RUNTIME_FAILURE, EXIT_USER_ERROR, DaemonError
from daemon.home import NodeHome, default_home, existing_home

#: The console commands print to (rich markup, wrapped to the terminal).
stdout = Console()


class UserError(DaemonError):
    """An expected failure whose message is the one line the user sees."""

    def __init__(self, message: str, *, exit_code: int = EXIT_USER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, *, exit_code: int = EXIT_USER_ERROR) -> NoReturn:
    raise UserError(message, exit_code=exit_code)


def resolve_home(home: Path | None) -> NodeHome:
    return NodeHome(home if home is not None else default_home())


def require_home(home: Path | None) -> NodeHome:
    """The initialised node home, or the one line "no node home at …: run `parley init`"."""
    return existing_home(home if home is not None else default_home())


def print_json(document: object) -> None:
    """``--json`` output: plain print (rich would wrap and colour it)."""
    import json

    print(json.dumps(document, indent=2, default=str))


__all__ = [
    "EXIT_NOT_RUNNING",
    "EXIT_RUNTIME_FAILURE",
    "EXIT_USER_ERROR",
    "UserError",
    "fail",
    "print_json",
    "require_home",
    "resolve_home",
    "stdout",
]
