"""Framing on the byte stream: every Noise message is preceded by its 2-byte big-endian length.

Sans-IO: :class:`FrameReader` takes bytes as they arrive and hands out complete frames. A zero
length is refused (no Noise message is empty: a transport message carries at least its tag, a
handshake message at least its ephemeral key), and so is a buffer that grows past its limit
because the peer sends faster than we consume. With a node-wide
:class:`~handshake.budget.MemoryBudget`, the unconsumed bytes are also reserved there (and
given back as frames are consumed, or by :meth:`FrameReader.release`), so every session's
buffer counts against one bound for the whole node.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from handshake.budget import MemoryBudget
from schemas.errors import LocalProtocolError, RemoteProtocolError

#: The 2-byte length prefix can express exactly the Noise maximum message size.
MAX_FRAME: Final = 65535
FRAME_HEADER_LEN: Final = 2
#: Received bytes we hold without the caller consuming frames: a few maximal frames.
MAX_PENDING_BYTES: Final = 4 * (FRAME_HEADER_LEN + MAX_FRAME)

_HEADER = struct.Struct(">H")


class NeedData(enum.Enum):
    """Sentinel type: nothing complete yet, feed more bytes (h11's NEED_DATA)."""

    NEED_DATA = enum.auto()


NEED_DATA: Final = NeedData.NEED_DATA


def frame(message: bytes) -> bytes:
    """Prefix one Noise message with its length."""
    size = len(message)
    if not 0 < size <= MAX_FRAME:
        raise LocalProtocolError(f"cannot frame a {size}-byte message (1..{MAX_FRAME})")
    return _HEADER.pack(size) + message


class FrameReader:
    """Reassembles length-prefixed frames from arbitrary slices of the stream."""

    __slots__ = ("_budget", "_buffer", "_max_pending", "_position", "_reserved")

    def __init__(
        self, *, max_pending_bytes: int = MAX_PENDING_BYTES, budget: MemoryBudget | None = None
    ) -> None:
        if max_pending_bytes < FRAME_HEADER_LEN + MAX_FRAME:
            raise LocalProtocolError("max_pending_bytes must hold at least one maximal frame")
        # bytes while it holds whole frames received in one piece (no copy on the common path);
        # a bytearray once a partial frame has to be joined with what follows.
        self._buffer: bytes | bytearray = b""
        self._position = 0
        self._max_pending = max_pending_bytes
        self._budget = budget
        self._reserved = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer) - self._position

    def receive_data(self, data: bytes) -> None:
        pending = len(self._buffer) - self._position
        if pending + len(data) > self._max_pending:
            raise RemoteProtocolError(
                f"peer sent {pending + len(data)} unconsumed bytes, over the limit of"
                f" {self._max_pending}"
            )
        budget = self._budget
        if budget is not None:
            needed = pending + len(data) - self._reserved
            if needed > 0:
                if not budget.try_reserve(needed):
                    raise RemoteProtocolError(
                        f"receive budget of {budget.total_bytes} bytes is spent (node-wide)"
                    )
                self._reserved += needed
        if not pending:
            # Kept without copying, so it must be immutable.
            self._buffer = data if type(data) is bytes else bytes(data)
        else:
            # Compact lazily: once per feed, not once per frame.
            joined = bytearray(memoryview(self._buffer)[self._position :])
            joined += data
            self._buffer = joined
        self._position = 0

    def next_frame(self) -> bytes | NeedData:
        view = self.next_frame_view()
        if isinstance(view, NeedData):
            return view
        with view:
            return bytes(view)

    def next_frame_view(self) -> memoryview | NeedData:
        """Like :meth:`next_frame`, without copying: a view into the received bytes.

        Safe to keep: the reader never modifies a buffer it has handed out views of (it builds
        a new one when it must join a partial frame with what follows).
        """
        buffer = self._buffer
        position = self._position
        available = len(buffer) - position
        if available < FRAME_HEADER_LEN:
            return NEED_DATA
        (size,) = _HEADER.unpack_from(buffer, position)
        if size == 0:
            raise RemoteProtocolError("peer sent an empty frame")
        end = position + FRAME_HEADER_LEN + size
        if end > len(buffer):
            return NEED_DATA
        self._position = end
        if self._reserved:
            self._give_back(len(buffer) - end)
        return memoryview(buffer)[position + FRAME_HEADER_LEN : end]

    def _give_back(self, keep: int) -> None:
        """Hold no more of the budget than the ``keep`` bytes still unconsumed."""
        surplus = self._reserved - keep
        if surplus > 0 and self._budget is not None:
            self._budget.release(surplus)
            self._reserved = keep

    def release(self) -> None:
        """Drop what is buffered and give its bytes back to the budget (the session is over)."""
        self._buffer = b""
        self._position = 0
        self._give_back(0)

    def take_remaining(self) -> bytes:
        """Hand over what was received but not consumed (e.g. from the handshake to a session)."""
        rest = bytes(self._buffer[self._position :])
        self.release()
        return rest
