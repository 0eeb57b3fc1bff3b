"""How a bench hands back its figures: indented JSON on stdout and, when asked, in a file."""

from __future__ import annotations

import json
from pathlib import Path

from common.atomic import write_atomic


def write_report(json_path: Path | str | None, result: object) -> None:
    """``result`` as indented JSON in ``json_path`` (atomically, readable by all), if given."""
    if json_path is not None:
        write_atomic(Path(json_path), json.dumps(result, indent=2).encode(), mode=0o644)


def print_report(result: object) -> None:
    """``result`` as indented JSON on stdout (what ``parley bench …`` prints)."""
    print(json.dumps(result, indent=2))
