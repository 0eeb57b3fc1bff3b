"""A bound on the disk the node's outputs use: ``calls/`` and ``captions/`` in the home.

Every call and every caption job writes one folder (``calls/<call id>/``,
``captions/<job id>/``). Those folders are the unit kept or deleted: after each call and job,
at start and hourly, :meth:`StorageBound.enforce` deletes folders older than
``storage.keep_days``, then the oldest (by their newest file's modification time) until the
total is at most ``storage.max_bytes``. Folders in use (a call in progress, a running job) are
never deleted; symbolic links are deleted as links, never followed.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DAY_S: Final = 86400.0


@dataclass(frozen=True, slots=True)
class _Entry:
    path: Path
    size: int
    newest_mtime: float


@dataclass(frozen=True, slots=True)
class StorageReport:
    bytes_used: int
    folders: int
    deleted_folders: int
    deleted_bytes: int

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes_used": self.bytes_used,
            "folders": self.folders,
            "deleted_folders": self.deleted_folders,
            "deleted_bytes": self.deleted_bytes,
        }


def _measure(path: Path) -> _Entry:
    """Size and newest modification time of one entry (a folder's files, recursively)."""
    info = path.lstat()
    size, newest = info.st_size if not stat.S_ISDIR(info.st_mode) else 0, info.st_mtime
    if stat.S_ISDIR(info.st_mode):
        for folder, _, files in os.walk(path, followlinks=False):
            for name in files:
                try:
                    item = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue  # deleted meanwhile
                size += item.st_size
                newest = max(newest, item.st_mtime)
    return _Entry(path, size, newest)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StorageBound:
    """Keeps ``roots`` (folders of per-call/per-job folders) within a size and an age."""

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        max_bytes: int,
        keep_days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._roots = tuple(roots)
        self._max_bytes = max_bytes
        self._keep_days = keep_days
        self._clock = clock
        self._lock = threading.Lock()
        self._deleted_folders = 0
        self._deleted_bytes = 0
        self.last: StorageReport = StorageReport(0, 0, 0, 0)

    def enforce(self, *, in_use: Collection[Path] = ()) -> StorageReport:
        """Delete what is over the limits (blocking: call it in a worker thread)."""
        with self._lock:
            protected = {Path(path) for path in in_use}
            entries: list[_Entry] = []
            for root in self._roots:
                try:
                    children = list(root.iterdir())
                except FileNotFoundError:
                    continue
                for child in children:
                    try:
                        entries.append(_measure(child))
                    except FileNotFoundError:
                        continue
            entries.sort(key=lambda entry: entry.newest_mtime)
            total = sum(entry.size for entry in entries)
            horizon = self._clock() - self._keep_days * DAY_S if self._keep_days > 0 else None
            kept: list[_Entry] = []
            for entry in entries:
                too_old = horizon is not None and entry.newest_mtime < horizon
                too_big = self._max_bytes > 0 and total > self._max_bytes
                if (too_old or too_big) and entry.path not in protected:
                    _delete(entry.path)
                    total -= entry.size
                    self._deleted_folders += 1
                    self._deleted_bytes += entry.size
                else:
                    kept.append(entry)
            self.last = StorageReport(
                bytes_used=total,
                folders=len(kept),
                deleted_folders=self._deleted_folders,
                deleted_bytes=self._deleted_bytes,
            )
            return self.last

    def status(self) -> dict[str, object]:
        return {
            **self.last.as_dict(),
            "max_bytes": self._max_bytes,
            "keep_days": self._keep_days,
        }


__all__ = ["StorageBound", "StorageReport"]
