"""Live calls for the web page: the listener's captions fanned out to server-sent-event clients,
and past calls read back from their folders.

:class:`CallFeed` is a :class:`daemon.calls.CallObserver`. The call code tells it when a call
starts, hands it every batch of captions as they go back to the caller (partial and final, in the
speaker's language and translated), and tells it when the call ends. The feed turns each into a
:class:`CallEvent` and puts it, without waiting, into the channel of every client following that
call. A client that does not keep up (its channel holds :data:`MAX_QUEUED_EVENTS`) is dropped
rather than slowing the call. A new client first gets the call's recent final captions, so a page
opened mid-call is not blank.

Latency is the listener's: ``now - end of the caption's audio``, on the call's own clock (seconds
since ``CallStart`` arrived; the caller paces audio in real time from then).
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from daemon.calls import CALLS_DIR
from schemas.messages import CallStart, Caption

__all__ = [
    "CALL_KEY",
    "CallEvent",
    "CallFeed",
    "CallSubscription",
    "UnknownCallError",
    "check_call_key",
]

CALL_KEY: Final = re.compile(r"[0-9]{1,20}(-[0-9]{1,3})?")
#: Final captions kept per live call for a client that joins late.
BACKLOG_CAPTIONS: Final = 200
#: Events queued for one client before it is dropped as too slow.
MAX_QUEUED_EVENTS: Final = 1000
#: Live calls remembered after they end (so a page that follows one sees it end).
MAX_ENDED_CALLS: Final = 20
#: Past calls listed at most.
MAX_PAST_CALLS: Final = 200


class UnknownCallError(Exception):
    status = 404


def check_call_key(value: str) -> str:
    if not CALL_KEY.fullmatch(value):
        raise UnknownCallError("no such call")
    return value


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One server-sent event: ``kind`` is ``started``, ``caption`` or ``ended``."""

    kind: str
    data: dict[str, object]
    #: ``time.perf_counter()`` when the feed published it (for the SSE delay bench).
    published_at: float

    def encode(self) -> bytes:
        return f"event: {self.kind}\ndata: {json.dumps(self.data)}\n\n".encode()


@dataclass(slots=True)
class _LiveCall:
    key: str
    peer: str
    speaker_language: str
    listener_language: str
    started_at: float
    ended_reason: str | None = None
    backlog: collections.deque[CallEvent] = field(
        default_factory=lambda: collections.deque(maxlen=BACKLOG_CAPTIONS)
    )
    latency_s: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.key,
            "peer": self.peer,
            "speaker_language": self.speaker_language,
            "listener_language": self.listener_language,
            "started_at": self.started_at,
            "live": self.ended_reason is None,
            "reason": self.ended_reason,
            "latency_s": dict(self.latency_s),
        }


@dataclass(slots=True)
class CallSubscription:
    """One client following one call: ``events`` until the call ends; ``close()`` when done."""

    feed: CallFeed
    call_key: str
    _send: trio.MemorySendChannel[CallEvent]
    events: trio.MemoryReceiveChannel[CallEvent]

    def close(self) -> None:
        self.feed._unsubscribe(self.call_key, self._send)
        self._send.close()
        self.events.close()


class CallFeed:
    """See the module docstring. All methods run on the node's event loop."""

    def __init__(self, home_root: Path) -> None:
        self._calls_dir = home_root / CALLS_DIR
        self._live: dict[str, _LiveCall] = {}
        self._ended: collections.deque[str] = collections.deque()
        self._clients: dict[str, set[trio.MemorySendChannel[CallEvent]]] = {}

    # -- CallObserver ---------------------------------------------------------------------------

    def call_started(self, call_key: str, peer: str, start: CallStart) -> None:
        call = _LiveCall(
            key=call_key,
            peer=peer,
            speaker_language=start.speaker_language,
            listener_language=start.listener_language,
            started_at=time.time(),
        )
        self._live[call_key] = call
        self._publish(call_key, CallEvent("started", call.as_json(), time.perf_counter()))

    def captions(self, call_key: str, captions: Sequence[Caption], now_s: float) -> None:
        call = self._live.get(call_key)
        if call is None:
            return
        for caption in captions:
            latency = max(0.0, now_s - caption.end_s)
            if caption.final:
                call.latency_s[caption.language] = round(latency, 3)
            event = CallEvent(
                "caption",
                {
                    "call": call_key,
                    "seq": caption.seq,
                    "language": caption.language,
                    "final": caption.final,
                    "text": caption.text,
                    "start_s": round(caption.start_s, 3),
                    "end_s": round(caption.end_s, 3),
                    "latency_s": round(latency, 3),
                    "role": "speaker"
                    if caption.language == call.speaker_language
                    else "translation",
                },
                time.perf_counter(),
            )
            if caption.final:
                call.backlog.append(event)
            self._publish(call_key, event)

    def call_ended(self, call_key: str, reason: str) -> None:
        call = self._live.get(call_key)
        if call is None:
            return
        call.ended_reason = reason
        self._publish(call_key, CallEvent("ended", call.as_json(), time.perf_counter()))
        for channel in self._clients.pop(call_key, set()):
            channel.close()
        self._ended.append(call_key)
        while len(self._ended) > MAX_ENDED_CALLS:
            self._live.pop(self._ended.popleft(), None)

    # -- clients --------------------------------------------------------------------------------

    def subscribe(self, call_key: str) -> CallSubscription:
        """The call's events: its recent finals first, then live ones until it ends.

        Raises :class:`UnknownCallError` for a call that is neither live nor on disk. The caller
        must ``close()`` the subscription.
        """
        call = self._live.get(check_call_key(call_key))
        if call is None and not (self._calls_dir / call_key).is_dir():
            raise UnknownCallError("no such call")
        send, receive = trio.open_memory_channel[CallEvent](MAX_QUEUED_EVENTS)
        if call is not None:
            send.send_nowait(CallEvent("started", call.as_json(), time.perf_counter()))
            for event in call.backlog:
                send.send_nowait(event)
        if call is None or call.ended_reason is not None:
            if call is not None:
                send.send_nowait(CallEvent("ended", call.as_json(), time.perf_counter()))
            send.close()
        else:
            self._clients.setdefault(call_key, set()).add(send)
        return CallSubscription(self, call_key, send, receive)

    def _unsubscribe(self, call_key: str, send: trio.MemorySendChannel[CallEvent]) -> None:
        clients = self._clients.get(call_key)
        if clients is not None:
            clients.discard(send)
            if not clients:
                del self._clients[call_key]

    def _publish(self, call_key: str, event: CallEvent) -> None:
        for channel in list(self._clients.get(call_key, ())):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._unsubscribe(call_key, channel)
                channel.close()

    # -- listing --------------------------------------------------------------------------------

    def live_calls(self) -> list[dict[str, object]]:
        return [call.as_json() for call in self._live.values() if call.ended_reason is None]

    def past_calls(self, *, limit: int = 50) -> list[dict[str, object]]:
        """Finished calls from their folders, newest first, with their tracks and latency."""
        try:
            folders = [
                path
                for path in self._calls_dir.iterdir()
                if CALL_KEY.fullmatch(path.name) and path.is_dir()
            ]
        except FileNotFoundError:
            return []
        folders.sort(key=_mtime, reverse=True)
        result = []
        for folder in folders[: min(limit, MAX_PAST_CALLS)]:
            if folder.name in self._live and self._live[folder.name].ended_reason is None:
                continue
            result.append(self.describe(folder.name))
        return result

    def describe(self, call_key: str) -> dict[str, object]:
        folder = self._calls_dir / check_call_key(call_key)
        if not folder.is_dir():
            raise UnknownCallError("no such call")
        summary: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads((folder / "summary.json").read_bytes())
            if isinstance(loaded, dict):
                summary = loaded
        tracks = sorted(
            {path.name.split(".")[1] for path in folder.glob("call.*.vtt") if path.is_file()}
        )
        audio = sorted(path.name for path in folder.glob("received.*.wav") if path.is_file())
        live = self._live.get(call_key)
        speaker = summary.get("speaker_language")
        listener = summary.get("listener_language")
        captions = {
            role: _track_texts(folder / f"call.{language}.srt")
            for role, language in (("speaker", speaker), ("translation", listener))
            if isinstance(language, str) and language in tracks
        }
        return {
            "id": call_key,
            "peer": summary.get("peer") or (live.peer if live else None),
            "speaker_language": summary.get("speaker_language"),
            "listener_language": summary.get("listener_language"),
            "ended_by": summary.get("ended_by"),
            "audio_s": summary.get("audio_s"),
            "latency": summary.get("latency"),
            "tracks": tracks,
            "audio": audio,
            "finished_at": _mtime(folder),
            "live": live is not None and live.ended_reason is None,
            "captions": captions,
        }

    def track(self, call_key: str, language: str, caption_format: str) -> tuple[Path, str]:
        if caption_format not in ("vtt", "srt") or not re.fullmatch(r"[A-Za-z-]{2,12}", language):
            raise UnknownCallError("no such track")
        path = self._calls_dir / check_call_key(call_key) / f"call.{language}.{caption_format}"
        if not path.is_file():
            raise UnknownCallError("no such track")
        media_type = "text/vtt" if caption_format == "vtt" else "application/x-subrip"
        return path, f"{media_type}; charset=utf-8"

    def audio(self, call_key: str) -> tuple[Path, str]:
        folder = self._calls_dir / check_call_key(call_key)
        found = sorted(folder.glob("received.*.wav"))
        if not found or not found[0].is_file():
            raise UnknownCallError("this call kept no audio")
        return found[0], "audio/wav"


def _track_texts(path: Path) -> list[str]:
    """The cue texts of an SRT file the listener wrote (one line each), in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    texts = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.strip().split("\n") if line]
        if len(lines) >= 3 and "-->" in lines[1]:
            texts.append(" ".join(lines[2:]))
    return texts


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
