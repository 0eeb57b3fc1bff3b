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
