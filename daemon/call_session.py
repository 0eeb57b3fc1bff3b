"""One call on one session, for either role: the trio shell around :class:`CallProtocol`.

Theory of operation
-------------------
The call's logic lives in :mod:`media.call_protocol` (sans-IO). This shell only moves things:

* a **reader** task hands every session message to the machine and dispatches its events:
  ``FramesReceived`` to our :class:`~daemon.call_listener.ListenerRun` (the other side's
  audio -> captions, translation, speech for our user), ``CaptionReceived`` to ``on_caption``
  (the peer's captions of *our* speech), ``CallAnswered`` (caller) builds the listener for the
  callee's codec and starts our audio, ``PeerEnding`` starts the orderly end;
* a **speaker** task reads our user's audio (:class:`AudioSource`: a file at real time, a
  microphone), encodes it with :class:`~media.call_sender.CallSender` and hands the frames to
  the machine;
* a **writer** task sends what the machine queued, in order (one writer: frames must keep
  their sequence);
* a **timer** task calls :meth:`CallProtocol.tick` at its deadlines (ring, longest call, the
  peer's ``CallEnd``).

Ending. A local hang-up (``hang_up`` event, or a finite source running out when
``hang_up_when_source_ends``) stops our audio (flushing our encoder), closes our listener's
input and lets it flush, so its last captions of the peer's speech still reach the peer, then
sends our ``CallEnd`` with our listener summary and waits for the peer's (its final captions
of our speech come first). The peer's ``CallEnd`` first (``PeerEnding``): the same, and our
``CallEnd`` ends the call. A limit the peer breaks
ends the call at once (``CallEndReason.LIMIT``). Whatever ended the call, our listener is
flushed locally afterwards (bounded by :data:`FLUSH_TIMEOUT_S`) so our user's files are whole.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import numpy.typing as npt
import trio

from daemon.call_listener import ListenerRun
from handshake.stream import SessionStream
from media.call_protocol import (
    CallAnswered,
    CallEnded,
    CallEndReason,
    CallEvent,
    CallProtocol,
    CallState,
    CallSummary,
    CaptionReceived,
    FramesReceived,
    PeerEnding,
)
from media.call_receiver import CallLimitError
from media.call_sender import CallSender
from media.features import SAMPLE_RATE

if TYPE_CHECKING:
    from daemon.call_audio import Playout
from schemas.messages import CallStart, Caption, CodecFrames, CodecSettings, Message, VoiceTraits

__all__ = ["AudioSource", "CallResult", "FileSource", "OurMedia", "run_call"]

#: After the call ended, our listener gets this long to flush its last captions locally.
FLUSH_TIMEOUT_S: Final = 60.0
#: The timer re-reads the machine's deadline at least this often.
TIMER_STEP_S: Final = 0.5


class AudioSource(Protocol):
    """Our user's audio: 16 kHz mono float32 chunks as they are spoken (real time)."""

    def chunks(self) -> AsyncGenerator[npt.NDArray[np.float32], None]: ...


class FileSource:
    """A recording played into the call at real time (``pace`` > 1: faster, for tests).

    ``then_silence``: after the recording, silence follows at real time until the call ends,
    as a microphone in a quiet room would send (the other side's recognizer hears the pause
    that ends our last sentence); otherwise the source ends with the recording.
    """

    def __init__(
        self,
        samples: npt.ArrayLike,
        *,
        batch_ms: int = 100,
        pace: float = 1.0,
        then_silence: bool = False,
    ) -> None:
        if not (math.isfinite(pace) and 0.1 <= pace <= 1.5):
            raise ValueError(f"pace must be in [0.1, 1.5], got {pace}")
        self.samples = np.asarray(samples, dtype=np.float32)
        self._batch = max(1, round(batch_ms * SAMPLE_RATE / 1000))
        self._pace = pace
        self.then_silence = then_silence

    async def chunks(self) -> AsyncGenerator[npt.NDArray[np.float32], None]:
        t0 = trio.current_time()
        for first in range(0, self.samples.shape[0], self._batch):
            chunk = self.samples[first : first + self._batch]
            await trio.sleep_until(t0 + (first + chunk.shape[0]) / SAMPLE_RATE / self._pace)
            yield chunk
        if not self.then_silence:
            return
        silence = np.zeros(self._batch, dtype=np.float32)
        played = self.samples.shape[0]
        while True:
            played += self._batch
            await trio.sleep_until(t0 + played / SAMPLE_RATE / self._pace)
            yield silence


@dataclass(slots=True)
class OurMedia:
    """Our side of a call: what our answer announces and the audio we send (None: listen only)."""

    codec: CodecSettings
    voice: VoiceTraits
    sender: CallSender | None = None
    source: AudioSource | None = None
    #: Why we send no audio (a missing device, the peer cannot decode us), for the log.
    silent_because: str = ""
    #: Where the other side's translated speech plays (None: only the call's WAV).
    playout: Playout | None = None


@dataclass(slots=True)
class CallResult:
    """How the call ended and what our listener made of the other side's audio."""

    summary: CallSummary
    listener: ListenerRun | None
    #: Set when the peer broke a media limit (its code: "flood", "bad_payload", ...).
    violation: CallLimitError | None
    #: Our audio the machine sent, in seconds, and its encoder.
    sender: CallSender | None


#: Caller: builds the listener for the callee's codec (their CallStart, when it arrived).
MakeListener = Callable[[CallStart, float], Awaitable[ListenerRun | None]]
WireSummary = Callable[[ListenerRun | None], str]


async def run_call(
    session: SessionStream,
    protocol: CallProtocol,
    *,
    sender: CallSender | None,
    source: AudioSource | None,
    hang_up_when_source_ends: bool,
    listener: ListenerRun | None = None,
    make_listener: MakeListener | None = None,
    on_caption: Callable[[Caption], None] | None = None,
    on_listener_captions: Callable[[Sequence[Caption]], None] | None = None,
    wire_summary: WireSummary | None = None,
    hang_up: trio.Event | None = None,
    on_ended: Callable[[CallSummary, CallLimitError | None], None] | None = None,
) -> CallResult:
    """Hold the call until it ends (module docstring); the machine has placed or answered it."""
    shell = _CallShell(
        session,
        protocol,
        sender=sender,
        source=source,
        hang_up_when_source_ends=hang_up_when_source_ends,
        listener=listener,
        make_listener=make_listener,
        on_caption=on_caption,
        on_listener_captions=on_listener_captions,
        wire_summary=wire_summary,
        hang_up=hang_up if hang_up is not None else trio.Event(),
        on_ended=on_ended,
    )
    return await shell.run()


class _CallShell:
    def __init__(
        self,
        session: SessionStream,
        protocol: CallProtocol,
        *,
        sender: CallSender | None,
        source: AudioSource | None,
        hang_up_when_source_ends: bool,
        listener: ListenerRun | None,
        make_listener: MakeListener | None,
        on_caption: Callable[[Caption], None] | None,
        on_listener_captions: Callable[[Sequence[Caption]], None] | None,
        wire_summary: WireSummary | None,
        hang_up: trio.Event,
        on_ended: Callable[[CallSummary, CallLimitError | None], None] | None,
    ) -> None:
        self._on_ended = on_ended
        self._session = session
        self._protocol = protocol
        self._sender = sender
        self._source = source
        self._hang_up_when_source_ends = hang_up_when_source_ends
        self._listener = listener
        self._make_listener = make_listener
        self._on_caption = on_caption
        self._on_listener_captions = on_listener_captions
        self._wire_summary = wire_summary
        self._hang_up = hang_up
        self._out_send, self._out_receive = trio.open_memory_channel[Message](math.inf)
        self._ended = trio.Event()
        self._written = trio.Event()
        #: Their frames that arrived while their listener was being built (caller side).
        self._waiting_frames: list[CodecFrames] | None = None
        self._their_start: CallStart | None = None
        self._answered_at = 0.0
        self._listener_refused = False
        self._speaking = trio.CancelScope()
        self._speaking_started = False
        self._speaks = False
        self._spoken = trio.Event()
        self._ending_started = False
        self._violation: CallLimitError | None = None
        self._nursery: trio.Nursery | None = None

    # -- the machine's output ---------------------------------------------------------------

    def _flush(self) -> None:
        for message in self._protocol.messages_to_send():
            self._out_send.send_nowait(message)

    async def _writer(self) -> None:
        try:
            await self._write_all()
        finally:
            self._written.set()

    async def _write_all(self) -> None:
        async with self._out_receive:
            async for message in self._out_receive:
                batch = [message]
                while True:
                    try:
                        batch.append(self._out_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await self._session.send_messages(batch)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._dispatch(self._protocol.session_broken())
                    return

    # -- events ------------------------------------------------------------------------------

    def _dispatch(self, events: list[CallEvent]) -> None:
        # Messages leave only through the writer, after this returns: on_ended runs first.
        for event in events:
            if isinstance(event, FramesReceived):
                self._their_frames(event)
            elif isinstance(event, CaptionReceived):
                self._their_caption(event.caption)
            elif isinstance(event, CallAnswered):
                assert self._nursery is not None
                self._nursery.start_soon(self._answered, event.their_start)
            elif isinstance(event, PeerEnding):
                self._start_ending(peer_first=True)
            elif isinstance(event, CallEnded):
                self._speaking.cancel()
                self._ended.set()
                if self._on_ended is not None:
                    self._on_ended(event.summary, self._violation)
        self._flush()

    def _their_frames(self, event: FramesReceived) -> None:
        if self._waiting_frames is not None:
            self._waiting_frames.append(event.frames)
            return
        can_build = self._make_listener is not None and self._their_start is not None
        if self._listener is None and can_build and not self._listener_refused:
            self._waiting_frames = [event.frames]
            assert self._nursery is not None
            self._nursery.start_soon(self._build_listener)
            return
        if self._listener is None or self._ended.is_set():
            return  # we cannot decode them (no bundle) or do not listen: dropped
        try:
            self._listener.accept(event.frames)
        except CallLimitError as error:
            self._violated(error)

    def _their_caption(self, caption: Caption) -> None:
        if self._on_caption is None:
            # We send no audio: nothing of ours to caption.
            self._violated(CallLimitError("unexpected_message", "Caption has no place in a call"))
            return
        try:
            self._on_caption(caption)
        except CallLimitError as error:
            self._violated(error)

    def _violated(self, error: CallLimitError) -> None:
        if self._protocol.state in (CallState.ENDED, CallState.ERROR):
            return
        self._violation = error
        self._dispatch(self._protocol.abort(CallEndReason.LIMIT, str(error)))

    async def _answered(self, their_start: CallStart) -> None:
        self._their_start, self._answered_at = their_start, time.monotonic()
        self._start_speaking()

    async def _build_listener(self) -> None:
        """Caller: the listener for the callee's codec, built at its first frames (a callee
        that only listens costs us no models); frames arriving meanwhile wait."""
        assert self._make_listener is not None and self._their_start is not None
        try:
            listener = await self._make_listener(self._their_start, self._answered_at)
        finally:
            waiting, self._waiting_frames = self._waiting_frames, None
        if listener is None or self._ended.is_set():
            self._listener_refused = True
            return
        listener.set_send_captions(self._listener_captions)
        self._listener = listener
        assert self._nursery is not None
        self._nursery.start_soon(listener.run)
        for frames in waiting or []:
            self._their_frames(FramesReceived(frames))

    # -- our audio -----------------------------------------------------------------------------

    def _start_speaking(self) -> None:
        if self._speaking_started or self._ended.is_set():
            return
        self._speaking_started = True
        assert self._nursery is not None
        if self._sender is not None and self._source is not None:
            self._speaks = True
            self._nursery.start_soon(self._speak)

    async def _speak(self) -> None:
        assert self._sender is not None and self._source is not None
        try:
            with self._speaking:
                # aclosing: a microphone's generator closes its stream here, not at GC.
                async with contextlib.aclosing(self._source.chunks()) as chunks:
                    async for chunk in chunks:
                        frames = await trio.to_thread.run_sync(self._sender.push, chunk)
                        self._send_frames(frames)
                if self._hang_up_when_source_ends:
                    self._hang_up.set()
        finally:
            # The encoder's tail, from this task only: a push may still be running in a
            # worker thread when we are cancelled, and the encoder is not thread-safe.
            with trio.CancelScope(shield=True):
                tail = await trio.to_thread.run_sync(self._sender.finish)
                self._send_frames(tail)
                self._spoken.set()

    def _may_send_media(self) -> bool:
        """Frames and captions go out once the call is answered, until our end is sent."""
        protocol = self._protocol
        return not protocol.our_end_sent and protocol.state in (
            CallState.ANSWERED,
            CallState.IN_CALL,
            CallState.ENDING,
        )

    def _send_frames(self, frames: Sequence[CodecFrames]) -> None:
        if not self._may_send_media():
            return
        protocol = self._protocol
        for message in frames:
            protocol.send_frames(message)
        self._flush()

    async def _listener_captions(self, captions: Sequence[Caption]) -> None:
        if self._on_listener_captions is not None:
            self._on_listener_captions(captions)
        if not self._may_send_media():
            return
        protocol = self._protocol
        for caption in captions:
            protocol.send_caption(caption)
        self._flush()

    # -- the end ---------------------------------------------------------------------------------

    def _start_ending(self, *, peer_first: bool) -> None:
        if self._ending_started or self._ended.is_set():
            return
        self._ending_started = True
        assert self._nursery is not None
        self._nursery.start_soon(self._end, peer_first)

    async def _end(self, peer_first: bool) -> None:
        self._speaking.cancel()
        if self._speaks:
            await self._spoken.wait()  # our encoder's tail went out (see _speak)
        if self._listener is not None:
            # Either way the call is over for our listener: flush it (Whisper's last words,
            # the translator's queue) so its last captions reach the peer before our CallEnd.
            # Their frames still in flight after a hang-up of ours are dropped.
            self._listener.end_of_audio()
            with trio.move_on_after(FLUSH_TIMEOUT_S):
                await self._listener.finished.wait()
        if self._ended.is_set() or self._protocol.our_end_sent:
            return
        summary = self._wire_summary(self._listener) if self._wire_summary is not None else ""
        reason = CallEndReason.COMPLETED if peer_first else CallEndReason.HANGUP
        self._dispatch(self._protocol.hang_up(reason, summary_json=summary))

    async def _wait_for_hang_up(self) -> None:
        await self._hang_up.wait()
        if self._protocol.state is CallState.RINGING:
            self._dispatch(self._protocol.hang_up(CallEndReason.HANGUP))
            return
        self._start_ending(peer_first=False)

    async def _reader(self) -> None:
        while not self._ended.is_set():
            try:
                message = await self._session.receive_message()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                self._dispatch(self._protocol.session_broken())
                return
            self._dispatch(self._protocol.receive_message(message))

    async def _timer(self) -> None:
        while not self._ended.is_set():
            deadline = self._protocol.next_deadline()
            wait = TIMER_STEP_S if deadline is None else deadline - time.monotonic()
            await trio.sleep(min(max(wait, 0.0), TIMER_STEP_S))
            deadline = self._protocol.next_deadline()
            if deadline is not None and time.monotonic() >= deadline:
                self._dispatch(self._protocol.tick())

    # -- the whole call --------------------------------------------------------------------------

    async def run(self) -> CallResult:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._listener is not None:
                self._listener.set_send_captions(self._listener_captions)
            nursery.start_soon(self._writer)
            if self._listener is not None:
                nursery.start_soon(self._listener.run)
            self._flush()  # the CallStart that placed or answered the call
            if self._protocol.state in (CallState.ANSWERED, CallState.IN_CALL):
                self._start_speaking()
            nursery.start_soon(self._reader)
            nursery.start_soon(self._timer)
            nursery.start_soon(self._wait_for_hang_up)
            await self._ended.wait()
            self._flush()
            self._out_send.close()  # the writer sends what is queued (our CallEnd), then ends
            listener = self._listener
            if listener is not None and not listener.finished.is_set():
                listener.end_of_audio()
                if self._violation is None:
                    with trio.move_on_after(FLUSH_TIMEOUT_S):
                        await listener.finished.wait()
            with trio.move_on_after(5.0):
                await self._written.wait()
            nursery.cancel_scope.cancel()
        summary = self._protocol.summary
        assert summary is not None
        return CallResult(
            summary=summary, listener=self._listener, violation=self._violation, sender=self._sender
        )
