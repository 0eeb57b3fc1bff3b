"""Options shared by every ``parley`` command module (kept apart so they import no CLI code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="Node home folder \\[default: $PARLEY_HOME or ~/.local/share/parley]."
    ),
]

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (JSON) instead of a table.")
]

PortOption = Annotated[
    int | None,
    typer.Option(
        "--port",
        help="Override listen.port (checked like the config file: 1..65535).",
        show_default=False,
    ),
]

LogFileOption = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        help="Override node.log_file: log to this file, rotated at 10 MB, 5 kept.",
        show_default=False,
    ),
]
