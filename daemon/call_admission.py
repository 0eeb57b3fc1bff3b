"""Which calls the node takes on: per-peer limits and admission by measured recognizer load.

Theory of operation
-------------------
A call costs the listener Whisper, translation and speech synthesis for as long as it lasts,
and disk for its files, so who may call and how much is bounded here, in plain (sans-IO)
objects the call handler consults before it loads anything:

* :class:`PeerCallLimits` counts, per peer key, the calls running now (at most
  ``max_concurrent_per_peer``) and the calls started within the last hour (at most
  ``max_per_peer_per_hour``). The table is bounded (:data:`MAX_TRACKED_PEERS`); when it is full
  and every entry is still inside its hour, a new peer is refused (fail closed) instead of
  evicting someone's history.
* :class:`RecognizerLoad` is admission by load, not by count. All calls share one Whisper model
  that decodes one batch at a time, and each call's recognizer takes whatever audio arrived
  since its previous batch (``daemon.calls``), so a Whisper decode costs about the same whatever
  the batch holds, and with ``n`` calls each call waits for the others' decodes. It tracks, per
  running call, the seconds of audio received and the seconds already recognized (the pending
  audio: since audio arrives in real time, that is how long the oldest of it has waited), and
  measures the decode speed as the wall time of a recognize batch (an exponential moving
  average over all calls; it rises with load, because an idle recognizer takes small batches
  that often skip Whisper). The delay a new call would see is predicted as
  ``max(pending) + (n + 1) * decode_s``: the audio already waiting, then one decode of every
  call, its own included. Over ``max_caption_delay_s`` the call is refused as "busy".

Clocks are injected (monotonic seconds), so tests drive them directly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

#: Peers whose recent calls are remembered for the hourly limit.
MAX_TRACKED_PEERS: Final = 4096
HOUR_S: Final = 3600.0
#: Weight of the newest recognize batch in the decode-time average.
DECODE_SMOOTHING: Final = 0.2


@dataclass(slots=True)
class _PeerCalls:
    active: int = 0
    started: deque[float] = field(default_factory=deque)


class PeerCallLimits:
    """Per-peer call counts: concurrent calls and calls started within the last hour."""

    def __init__(
        self,
        *,
        max_concurrent_per_peer: int,
        max_per_hour: int,
        clock: Callable[[], float],
        max_tracked: int = MAX_TRACKED_PEERS,
    ) -> None:
        self._max_concurrent = max_concurrent_per_peer
        self._max_per_hour = max_per_hour
        self._clock = clock
        self._max_tracked = max_tracked
        self._peers: dict[bytes, _PeerCalls] = {}

    def refusal(self, peer: bytes) -> str | None:
        """Why ``peer`` may not start a call now, or None."""
        entry = self._peers.get(peer)
        if entry is None:
            if len(self._peers) >= self._max_tracked and not self._make_room():
                return "busy: too many callers this hour"
            return None
        self._forget_old(entry)
        if entry.active >= self._max_concurrent:
            plural = "s" if self._max_concurrent != 1 else ""
            return (
                f"busy: you already hold {entry.active} call{plural} with this node, its limit "
                "per peer"
            )
        if len(entry.started) >= self._max_per_hour:
            return f"busy: you started {len(entry.started)} calls within the hour, the limit"
        return None

    def start(self, peer: bytes) -> None:
        """A call from ``peer`` was admitted (call :meth:`refusal` first)."""
        entry = self._peers.setdefault(peer, _PeerCalls())
        entry.active += 1
        entry.started.append(self._clock())

    def end(self, peer: bytes) -> None:
        entry = self._peers.get(peer)
        if entry is not None and entry.active > 0:
            entry.active -= 1

    def active(self, peer: bytes) -> int:
        entry = self._peers.get(peer)
        return entry.active if entry is not None else 0

    def _forget_old(self, entry: _PeerCalls) -> None:
        horizon = self._clock() - HOUR_S
        while entry.started and entry.started[0] <= horizon:
            entry.started.popleft()

    def _make_room(self) -> bool:
        for key in list(self._peers):
            entry = self._peers[key]
            self._forget_old(entry)
            if entry.active == 0 and not entry.started:
                del self._peers[key]
        return len(self._peers) < self._max_tracked


@dataclass(slots=True)
class _CallAudio:
    received_s: float = 0.0
    recognized_s: float = 0.0


class RecognizerLoad:
    """Queued audio per running call and the measured decode speed (see the module docstring)."""

    def __init__(self) -> None:
        self._calls: dict[int, _CallAudio] = {}
        self._decode_s: float | None = None

    @property
    def decode_s(self) -> float | None:
        """Measured wall seconds of one recognize batch (None before any batch)."""
        return self._decode_s

    def open_call(self, call: int) -> None:
        self._calls[call] = _CallAudio()

    def close_call(self, call: int) -> None:
        self._calls.pop(call, None)

    def received(self, call: int, audio_s: float) -> None:
        entry = self._calls.get(call)
        if entry is not None:
            entry.received_s += audio_s

    def recognized(self, call: int, audio_s: float, wall_s: float) -> None:
        """A recognize batch of ``audio_s`` seconds of audio took ``wall_s`` seconds."""
        entry = self._calls.get(call)
        if entry is not None:
            entry.recognized_s = min(entry.received_s, entry.recognized_s + audio_s)
        if math.isfinite(wall_s) and wall_s >= 0:
            self._decode_s = (
                wall_s
                if self._decode_s is None
                else (1 - DECODE_SMOOTHING) * self._decode_s + DECODE_SMOOTHING * wall_s
            )

    def pending_s(self) -> list[float]:
        return [max(0.0, c.received_s - c.recognized_s) for c in self._calls.values()]

    def predicted_delay_s(self) -> float:
        """How late a new call's captions would be, in seconds."""
        decode_s = self._decode_s if self._decode_s is not None else 0.0
        return max(self.pending_s(), default=0.0) + (len(self._calls) + 1) * decode_s

    def refusal(self, max_delay_s: float) -> str | None:
        delay = self.predicted_delay_s()
        if delay <= max_delay_s:
            return None
        return (
            f"busy: captions would be late by {delay:.1f} s (limit {max_delay_s:g} s); "
            "the speech recognizer is behind"
        )

    def status(self) -> dict[str, object]:
        return {
            "decode_s": None if self._decode_s is None else round(self._decode_s, 3),
            "pending_audio_s": round(sum(self.pending_s()), 3),
            "predicted_caption_delay_s": round(self.predicted_delay_s(), 3),
        }


__all__ = ["MAX_TRACKED_PEERS", "PeerCallLimits", "RecognizerLoad"]
