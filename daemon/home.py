"""The node home: one directory holding everything a node keeps (docs/design.md, "Storage and crash
safety").

Layout, all inside the home (mode 0700)::

    identity.key     X25519 private key, 32 raw bytes, mode 0600
    config.toml      settings, commented, every one at its default after ``parley init``
    node.db          SQLite: peers, trust, round history, caption jobs
    models/          codec checkpoints (atomic writes)
    features/        features of enrolled recordings (our own audio never leaves)
    status.sock      the local status RPC (mode 0600), present while the node runs
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemon.config import CONFIG_FILE_NAME
from daemon.errors import DaemonError

HOME_ENVIRONMENT_VARIABLE = "PARLEY_HOME"
HOME_MODE = 0o700


def default_home() -> Path:
    """``$PARLEY_HOME`` if set, else ``~/.local/share/parley`` (XDG data home)."""
    explicit = os.environ.get(HOME_ENVIRONMENT_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "parley"


@dataclass(frozen=True, slots=True)
class NodeHome:
    """Paths inside one node home. Creating it is explicit: see :meth:`create`."""

    root: Path

    @property
    def identity_path(self) -> Path:
        return self.root / "identity.key"

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE_NAME

    @property
    def database_path(self) -> Path:
        return self.root / "node.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def socket_path(self) -> Path:
        return self.root / "status.sock"

    def create(self) -> None:
        """Create the home (0700) and its folders; tighten the mode of an existing one."""
        self.root.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, HOME_MODE)
        for folder in (self.models_dir, self.features_dir):
            folder.mkdir(mode=HOME_MODE, exist_ok=True)


class NoHomeError(DaemonError):
    """There is no initialised node home where one is needed; ``str()`` is the user's line."""


def existing_home(root: Path) -> NodeHome:
    """The node home at ``root``, which ``parley init`` must have created (its identity).

    Every command that reads or changes a node's state checks this first, so a mistyped
    ``--home`` gets the same one line everywhere instead of a missing-file error from whichever
    file that command happens to open first.
    """
    home = NodeHome(root)
    if not home.identity_path.is_file():
        raise NoHomeError(f"no node home at {root}: run `parley init`")
    return home
