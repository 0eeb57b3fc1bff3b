"""``parley doctor``: check a node home and say what to do about each problem.

Each check reads only (the node may be running): the identity key, ``config.toml``, the
database (SQLite's ``PRAGMA integrity_check`` on a read-only connection, and the schema
version), the codec checkpoint and its previous generation, and the modes of the files in the
home (everything private: nothing readable or writable by group or others). A finding is
``ok``, a ``warning`` (the node copes, but something was lost or will be repaired at start) or
a ``problem`` (the node cannot start, or leaks); each non-ok finding carries the fix, in words
a user can act on. ``parley doctor`` exits 1 when any finding is not ok.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from codec.checkpoint import load_checkpoint, previous_path
from codec.errors import CheckpointError
from daemon.codec_store import CHECKPOINT_NAME, CREATED_MARKER
from daemon.config import ConfigError, load_config
from daemon.database import MIGRATIONS
from daemon.home import NodeHome
from daemon.identity import (
    IdentityError,
    IdentityExposedError,
    IdentityMissingError,
    load_identity,
)

#: Files looked at for their mode, at most (a home holds a few hundred).
MAX_FILES_CHECKED: Final = 20_000
#: Offending files named in the finding, at most.
MAX_FILES_SHOWN: Final = 5


class Severity(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    severity: Severity
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "severity": self.severity.value,
            "message": self.message,
            "fix": self.fix,
        }


def examine_home(home: NodeHome) -> list[Finding]:
    """Every check on ``home``, in order; never raises for what it finds."""
    if not home.root.is_dir():
        return [
            Finding(
                "home",
                Severity.PROBLEM,
                f"{home.root} is not a node home (no such folder)",
                "run 'parley init' (or pass --home with the right folder)",
            )
        ]
    return [
        check_identity(home),
        check_config(home),
        check_database(home),
        check_checkpoint(home),
        check_file_modes(home),
    ]


def check_identity(home: NodeHome) -> Finding:
    try:
        identity = load_identity(home.identity_path)
    except IdentityError as error:
        text = str(error)
        if isinstance(error, IdentityExposedError):
            fix = f"chmod 600 {home.identity_path}"
        elif isinstance(error, IdentityMissingError):
            fix = "run 'parley init' to create one"
        else:
            fix = (
                f"restore {home.identity_path.name} from a backup; otherwise 'parley init "
                "--force' makes a new identity (peers must then trust the new key)"
            )
        return Finding("identity", Severity.PROBLEM, text, fix)
    return Finding("identity", Severity.OK, f"peer id {identity.peer_id[:16]}")


def check_config(home: NodeHome) -> Finding:
    try:
        load_config(home.config_path)
    except ConfigError as error:
        return Finding(
            "config",
            Severity.PROBLEM,
            str(error),
            f"edit {home.config_path} (the line names the key); 'parley config' checks it",
        )
    if not home.config_path.exists():
        return Finding("config", Severity.OK, "no config.toml: every setting at its default")
    return Finding("config", Severity.OK, "config.toml is valid")


def check_database(home: NodeHome) -> Finding:
    path = home.database_path
    if not path.exists():
        return Finding("database", Severity.OK, "no node.db yet (created at the first start)")
    aside = f"{path.name}.broken"
    fix = (
        f"stop the node and move the file aside (mv {path} {path.with_name(aside)}): the node "
        "starts with an empty peer list, round history and job queue; trust your peers again "
        "with 'parley peers trust'"
    )
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as error:
        return Finding("database", Severity.PROBLEM, f"{path}: cannot open ({error})", fix)
    try:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as error:
        return Finding("database", Severity.PROBLEM, f"{path}: {error}", fix)
    finally:
        connection.close()
    results = [str(row[0]) for row in rows]
    if results != ["ok"]:
        shown = "; ".join(results[:3])
        return Finding("database", Severity.PROBLEM, f"{path} is damaged: {shown}", fix)
    if version > len(MIGRATIONS):
        return Finding(
            "database",
            Severity.PROBLEM,
            f"{path}: schema version {version} is from a newer parley",
            "upgrade parley",
        )
    return Finding("database", Severity.OK, "integrity check passed")


def check_checkpoint(home: NodeHome) -> Finding:
    path = home.models_dir / CHECKPOINT_NAME
    previous = previous_path(path)
    current_problem: str | None = None
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        current_problem = str(error) if path.exists() else f"{path} is missing"
    else:
        return Finding(
            "checkpoint", Severity.OK, f"codec checkpoint intact (round {checkpoint.round})"
        )
    if previous.exists():
        try:
            older = load_checkpoint(previous)
        except CheckpointError as error:
            return Finding(
                "checkpoint",
                Severity.PROBLEM,
                f"{current_problem}; the previous generation is damaged too ({error})",
                f"move {path.name} and {previous.name} aside: the node then starts again from "
                "the shared initial codec (run 'parley enroll' again to personalise it)",
            )
        return Finding(
            "checkpoint",
            Severity.WARNING,
            f"{current_problem}; the previous generation (round {older.round}) is intact",
            "nothing to do: the node restores the previous generation at its next start "
            "(the rounds since then are lost)",
        )
    if not path.exists() and not (home.models_dir / CREATED_MARKER).exists():
        return Finding("checkpoint", Severity.OK, "no checkpoint yet (created at the first start)")
    return Finding(
        "checkpoint",
        Severity.PROBLEM,
        f"{current_problem}; no previous generation to fall back to",
        f"restore {path} from a backup, or move it aside: the node then starts again from the "
        "shared initial codec (run 'parley enroll' again to personalise it)",
    )


def check_file_modes(home: NodeHome) -> Finding:
    exposed: list[str] = []
    checked = 0
    for folder, folders, files in os.walk(home.root, followlinks=False):
        for name in [*folders, *files]:
            checked += 1
            if checked > MAX_FILES_CHECKED:
                break
            item = Path(folder) / name
            try:
                mode = item.lstat().st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                continue
            if stat.S_IMODE(mode) & 0o077:
                exposed.append(f"{item.relative_to(home.root)} ({stat.S_IMODE(mode):04o})")
    root_mode = stat.S_IMODE(home.root.stat().st_mode)
    if root_mode & 0o077:
        exposed.insert(0, f". ({root_mode:04o})")
    if not exposed:
        return Finding("file modes", Severity.OK, "every file is private")
    shown = ", ".join(exposed[:MAX_FILES_SHOWN]) + (
        ", ..." if len(exposed) > MAX_FILES_SHOWN else ""
    )
    return Finding(
        "file modes",
        Severity.PROBLEM,
        f"{len(exposed)} entries readable or writable by others: {shown}",
        f"chmod -R go-rwx {home.root}",
    )


__all__ = ["Finding", "Severity", "examine_home"]
