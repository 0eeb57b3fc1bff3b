"""One node-wide budget of received bytes held in memory, shared by every session.

Two things hold bytes a peer sent before we act on them: a :class:`~handshake.framing.FrameReader`
(bytes not yet consumed as whole frames: a partial frame, or frames behind it) and chunk
reassembly in :class:`~handshake.session.Session` (the chunks of a message not yet complete).
Each is bounded per session; this bounds them for all sessions together, so a crowd of peers
each holding its per-session maximum cannot add up to more than the node allows. Reserved and
released explicitly; not thread-safe (sessions live on one event loop).
"""

from __future__ import annotations

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """Bytes shared by many sessions, reserved and released explicitly.

    A session that cannot reserve what it must hold next fails (``RemoteProtocolError``), so the
    whole is bounded, not only one session at a time.
    """

    def __init__(self, total_bytes: int) -> None:
        if total_bytes < 1:
            raise ValueError("a memory budget must be positive")
        self.total_bytes = total_bytes
        self.in_use = 0
        self.refused = 0

    def try_reserve(self, size: int) -> bool:
        if self.in_use + size > self.total_bytes:
            self.refused += 1
            return False
        self.in_use += size
        return True

    def release(self, size: int) -> None:
        self.in_use = max(0, self.in_use - size)
