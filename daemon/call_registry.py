"""The calls a node is ringing or holding now, for ``parley calls``, ``answer`` and ``hangup``.

A :class:`LiveCall` is the shell's handle on one call: the events the RPC sets (answer, hang
up), the machine's state, and the latest captions of both sides for a live view (bounded).
Ended calls stay listed for a short while (:data:`KEEP_ENDED`) so a client polling a call sees
how it ended.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from media.call_protocol import CallProtocol, CallRole, CallState, CallSummary
from schemas.messages import Caption

if TYPE_CHECKING:
    from daemon.call_audio import Playout

__all__ = ["KEEP_ENDED", "MAX_LIVE_CAPTIONS", "CaptionLine", "LiveCall", "LiveCalls"]

#: Captions kept per call for the live view (older ones are in the call's files).
MAX_LIVE_CAPTIONS: Final = 200
#: Ended calls kept in the list for clients polling them.
KEEP_ENDED: Final = 20


@dataclass(frozen=True, slots=True)
class CaptionLine:
    """One caption for the live view; ``index`` grows per call (poll with ``since``)."""

    index: int
    #: "ours": the peer's caption of our user's speech; "theirs": ours of the peer's speech.
    side: str
    language: str
    final: bool
    text: str

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "side": self.side,
            "language": self.language,
            "final": self.final,
            "text": self.text,
        }


@dataclass(slots=True, eq=False)
class LiveCall:
    call_id: int
    peer: str
    role: CallRole
    protocol: CallProtocol
    our_language: str
    their_language: str
    call_dir: Path | None = None
    started_at: float = field(default_factory=time.time)
    answer: trio.Event = field(default_factory=trio.Event)
    hang_up: trio.Event = field(default_factory=trio.Event)
    summary: CallSummary | None = None
    #: The reason text we recorded (refusal, or the CallEnd sent), once ended.
    reason: str = ""
    #: Input level of our audio (dBFS of the latest block), when a microphone feeds it.
    input_level_db: float | None = None
    #: The latest mouth-to-ear delay of the peer's speech we played (seconds): read from the
    #: playout when there is one.
    mouth_to_ear_s: float | None = None
    #: Where the peer's speech plays (mouth-to-ear, underruns), when a speaker does.
    playout: Playout | None = None
    captions: deque[CaptionLine] = field(default_factory=lambda: deque(maxlen=MAX_LIVE_CAPTIONS))
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def state(self) -> CallState:
        return self.protocol.state

    def add_captions(self, side: str, captions: Sequence[Caption]) -> None:
        for caption in captions:
            self.captions.append(
                CaptionLine(
                    next(self._counter), side, caption.language, caption.final, caption.text
                )
            )

    def as_dict(self, *, since: int = 0) -> dict[str, object]:
        if self.playout is not None:
            measured = self.playout.measured()
            if measured:
                self.mouth_to_ear_s = round(measured[-1], 3)
        summary = self.summary
        return {
            "call_id": self.call_id,
            "peer": self.peer,
            "role": self.role.value,
            "state": self.state.value,
            "languages": {"ours": self.our_language, "theirs": self.their_language},
            "started_at": self.started_at,
            "folder": str(self.call_dir) if self.call_dir is not None else None,
            "input_level_db": self.input_level_db,
            "mouth_to_ear_s": self.mouth_to_ear_s,
            "underruns": self.playout.underruns if self.playout is not None else None,
            "device_underruns": (
                self.playout.device_underruns if self.playout is not None else None
            ),
            "captions": [line.as_dict() for line in self.captions if line.index > since],
            "ended": None
            if summary is None
            else {
                "reason": summary.reason.value,
                "detail": summary.detail,
                "ended_by_us": summary.ended_by_us,
                "duration_s": round(summary.duration_s, 3),
                "text": self.reason,
            },
        }


class LiveCalls:
    """Calls ringing or running on this node, plus the last few ended ones."""

    def __init__(self) -> None:
        self._calls: dict[int, LiveCall] = {}

    def add(self, call: LiveCall) -> None:
        self._calls[call.call_id] = call
        ended = [c for c in self._calls.values() if c.summary is not None]
        for old in ended[:-KEEP_ENDED]:
            del self._calls[old.call_id]

    def get(self, call_id: int) -> LiveCall | None:
        return self._calls.get(call_id)

    def calls(self, *, include_ended: bool = False) -> list[LiveCall]:
        return [c for c in self._calls.values() if include_ended or c.summary is None]

    def ringing(self) -> list[LiveCall]:
        return [c for c in self.calls() if c.state is CallState.RINGING]
