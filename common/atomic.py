"""Crash-safe file writes: a ``kill -9`` at any moment leaves the old file or the new one, whole.

The one implementation every writer of durable state uses (identity, config, checkpoints,
peer bundles, caption files). Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file in the same folder, fsync, rename, fsync dir.

    The temp file is private (``mkstemp`` creates it 0600) until it is complete, so a secret is
    never readable by others, not even for an instant; ``mode`` is applied before the rename.
    """
    directory = path.parent
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            if mode != 0o600:
                os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_directory(directory)
