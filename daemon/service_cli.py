"""``parley install-service``: write the systemd user unit (:mod:`daemon.service`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from daemon.cli_options import HomeOption


def install_service_command(
    home: HomeOption = None,
    unit_dir: Annotated[
        Path | None,
        typer.Option(
            "--unit-dir",
            help="Where to write parley.service \\[default: ~/.config/systemd/user].",
            show_default=False,
        ),
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the unit instead of writing it.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing unit.")] = False,
) -> None:
    """Write a systemd user unit that runs this node, restarts it on failure and reloads its
    config on `systemctl --user reload parley`."""
    from common.atomic import write_atomic
    from daemon.cli_support import fail, require_home
    from daemon.service import UNIT_NAME, render_user_unit, user_unit_dir

    node_home = require_home(home)
    root = node_home.root.expanduser().resolve()
    command = [sys.executable, "-m", "daemon.cli", "node", "--home", str(root)]
    unit = render_user_unit(command, home=root)
    if print_only:
        print(unit, end="")
        return
    target = (unit_dir if unit_dir is not None else user_unit_dir()) / UNIT_NAME
    if target.exists() and not force:
        fail(f"{target}: a unit already exists; use --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, unit.encode(), mode=0o644)
    print(f"wrote {target}")
    print(
        "start it now and at every login:  systemctl --user daemon-reload && "
        "systemctl --user enable --now parley"
    )
    print("keep it running after logout:      loginctl enable-linger $USER")
    print("its logs:                          journalctl --user -u parley")
