"""Join files into one open file while hashing them: models shipped split over packages."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

_COPY_CHUNK: Final = 1 << 20


def write_joined(parts: Sequence[Path], out: BinaryIO) -> tuple[int, str]:
    """Copy ``parts`` in order into ``out``, flushed and fsynced; (bytes written, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    for part in parts:
        with part.open("rb") as piece:
            while chunk := piece.read(_COPY_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
    return size, digest.hexdigest()
