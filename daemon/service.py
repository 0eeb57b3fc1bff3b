"""A systemd user unit that keeps a node running: restarted on failure, reloaded by SIGHUP.

Pure text: :func:`render_user_unit` builds the unit and ``parley install-service`` writes it.
Exit code 2 (a bad config or flag) is excluded from restarts, since a restart cannot fix it;
logs go to the journal (``journalctl --user -u parley``) unless ``node.log_file`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

UNIT_NAME: Final = "parley.service"
RESTART_DELAY_S: Final = 5


def user_unit_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user``): where systemd looks for
    a user's own units."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def _quote(argument: str) -> str:
    """One ExecStart argument, quoted for systemd (which expands ``%`` specifiers and ``$``)."""
    escaped = (
        argument.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    )
    return f'"{escaped}"'


def render_user_unit(command: Sequence[str], *, home: Path) -> str:
    """The unit that runs ``command`` (``python -m daemon.cli node --home HOME``)."""
    return "\n".join(
        [
            "[Unit]",
            f"Description=parley node (home {home})",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            "ExecStart=" + " ".join(_quote(part) for part in command),
            # SIGHUP re-reads config.toml (node.log_* apply live; the node logs what needs a
            # restart).
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            f"RestartSec={RESTART_DELAY_S}",
            "RestartPreventExitStatus=2",
            "Environment=PYTHONUNBUFFERED=1",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )
