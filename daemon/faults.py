"""One unexpected error ends one unit of work, never the node.

The node runs many independent units: an inbound connection and its session, an RPC request,
an FL round, a caption job, the discovery task. A bug or an environmental failure (a locked
database, a full disk) inside one of them must end that unit only. :func:`run_isolated` runs a
unit and turns an unexpected exception into a :class:`FaultLog` entry: counted by exception
type (shown in ``parley status`` under ``faults``) and logged with its traceback at most once
per :data:`LOG_INTERVAL_S` for each (unit, type), so a peer that triggers the same bug a
thousand times a second cannot flood the log. Cancellation (a ``BaseException``) is never
swallowed.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from daemon.logs import get_logger
from daemon.views import FaultsView, to_wire

log = get_logger("faults")

#: The same (unit, exception type) is logged with its traceback at most this often.
LOG_INTERVAL_S: Final = 60.0
#: Distinct exception types counted; more are counted as ``other``.
MAX_KINDS: Final = 64


class FaultLog:
    """Unexpected exceptions, counted by type and logged rate-limited."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.counts: dict[str, int] = {}
        self.by_unit: dict[str, int] = {}
        self._last_logged: dict[tuple[str, str], float] = {}

    def record(self, unit: str, error: BaseException) -> None:
        kind = type(error).__name__
        if kind not in self.counts and len(self.counts) >= MAX_KINDS:
            kind = "other"
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if unit in self.by_unit or len(self.by_unit) < MAX_KINDS:
            self.by_unit[unit] = self.by_unit.get(unit, 0) + 1
        now = self._clock()
        last = self._last_logged.get((unit, kind))
        if last is not None and now - last < LOG_INTERVAL_S:
            return
        if len(self._last_logged) < MAX_KINDS * 4:
            self._last_logged[(unit, kind)] = now
        fields = {"unit": unit, "kind": kind, "reason": " ".join(str(error).split())[:300]}
        log.log(logging.ERROR, "unit.failed", extra={"fields": fields}, exc_info=error)

    def view(self) -> FaultsView:
        return FaultsView(
            total=sum(self.counts.values()), by_type=dict(self.counts), by_unit=dict(self.by_unit)
        )

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = to_wire(self.view())
        return shown


_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException) -> bool:
    """A full disk or quota, as an OSError or as SQLite's SQLITE_FULL (its typed error)."""
    from daemon.database import DatabaseFullError  # the database module imports nothing of ours

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        if isinstance(seen, DatabaseFullError):
            return True
        seen = seen.__cause__
    return False


def describe_failure(error: BaseException) -> str:
    """One line for a unit that failed: ``disk full: ...`` first, since that is what to fix."""
    text = " ".join(str(error).split()) or type(error).__name__
    if is_disk_full(error):
        return f"disk full: {text}"[:300]
    return f"{type(error).__name__}: {text}"[:300]


async def run_isolated(
    faults: FaultLog, unit: str, function: Callable[[], Awaitable[object]]
) -> bool:
    """Run one unit; an unexpected ``Exception`` is recorded and ends it. True if it ended well."""
    try:
        await function()
    except Exception as error:
        faults.record(unit, error)
        return False
    return True


__all__ = ["LOG_INTERVAL_S", "FaultLog", "describe_failure", "is_disk_full", "run_isolated"]
