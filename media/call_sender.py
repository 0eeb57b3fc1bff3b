"""The caller's media pipeline, sans-IO: PCM in, ``CodecFrames`` messages out.

16 kHz mono samples -> :class:`~media.features.StreamingLogMel` (Whisper's front end, running-max
normalisation) -> :class:`~media.codec_stream.StreamingEncoder` (our CSM, frame-exact with the
batch encoder) -> :func:`~codec.latent.pack_codes` -> :class:`~schemas.messages.CodecFrames`.

Each :meth:`CallSender.push` returns at most one message holding every latent frame its samples
completed, so the caller's batching (``call.batch_ms`` of audio per push) is the wire batching.
``start_time_s`` is the audio time of the message's first latent frame (latent index / latent
rate), which lets the receiver check that frames are contiguous and measure their delay.
The time each push spends computing is kept as the ``encode`` latency sample.

Discontinuous transmission (DTX, issue 16). With a :class:`~media.sender_vad.SileroStreamingVad`
the sender judges its own waveform and sends codec frames only for *talkspurts*:

- A talkspurt starts ``PRE_ROLL_S`` before the detector's speech onset (Silero starts a little
  late, and the first consonant needs its lead-in; faster-whisper pads its VAD spans too), on a
  latent-frame boundary, never before the previous talkspurt's end. Its first message carries
  ``speech_start``. Each talkspurt is encoded by a fresh :class:`StreamingEncoder` (batch
  padding at both ends), so the listener decodes it with a fresh decoder and gets exactly what
  the batch codec gives for that stretch of audio; the front end (and its running-max
  normalisation) stays continuous.
- It ends where the detector decided the speech ended, i.e. ``min_silence_s`` (0.6 s) of
  quiet after the last speech: that quiet is the talkspurt's tail (a natural hangover, long
  enough to bridge the pauses inside a sentence), and nothing waits for more audio. The
  encoder is flushed and the last message carries ``speech_end``: the listener may finalize
  the utterance at once instead of waiting for its own silence timer.
- In between, no codes: once every ``KEEPALIVE_S`` of audio a ``CodecFrames`` with
  ``frame_count == 0`` and an empty payload announces "silence up to ``start_time_s``" (the
  listener's timeline moves on, and its session sees the call alive). A keepalive's time lags
  the present by the pre-roll: those frames may still open the next talkspurt.

So ``start_time_s`` jumps over silence, and messages stay on the latent-frame grid
(``start_time_s * frame_rate_hz`` is an integer). Without a VAD every frame is sent, one
contiguous stream from a single encoder, as before. A listener that does not announce
:data:`DTX_CAPABILITY` in its ``Hello`` must be called without a VAD.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from codec.latent import pack_codes
from codec.model import CodecModel
from media.codec_stream import StreamingEncoder
from media.errors import StreamFinishedError
from media.features import FRAMES_PER_SECOND, StreamingLogMel
from media.latency import LatencyStats
from media.sender_vad import SileroStreamingVad, SpeechEdge
from schemas.messages import CodecFrames, CodecSettings

__all__ = ["DTX_CAPABILITY", "KEEPALIVE_S", "PRE_ROLL_S", "CallSender", "codec_settings"]

#: ``Hello`` capability of a listener that accepts DTX (gaps and keepalives, module docstring).
DTX_CAPABILITY: Final = "call-dtx/1"
#: Audio sent before the detector's speech onset.
PRE_ROLL_S: Final = 0.3
#: During silence, one keepalive per this much audio.
KEEPALIVE_S: Final = 1.0
#: Samples per log-mel frame (10 ms at 16 kHz).
_HOP: Final = 160


def codec_settings(model: CodecModel, version_hash: bytes) -> CodecSettings:
    """What ``CallStart`` announces about our codec (the receiver checks it against our bundle)."""
    config = model.config
    return CodecSettings(
        architecture_id=config.architecture_id,
        codec_version_hash=version_hash,
        latent_dim=config.latent_dim,
        latent_bits=config.latent_bits,
        frame_rate_hz=config.frame_rate_hz,
    )


class CallSender:
    """Turns the caller's audio into ``CodecFrames``; ``finish`` flushes the end of the stream.

    With ``vad``, frames are sent for talkspurts only (module docstring, DTX)."""

    def __init__(
        self,
        model: CodecModel,
        *,
        latency: LatencyStats | None = None,
        clock: Callable[[], float] = time.perf_counter,
        vad: SileroStreamingVad | None = None,
    ) -> None:
        self._model = model
        self._stride = model.config.stride
        self._front_end = StreamingLogMel()
        self._latency = latency if latency is not None else LatencyStats()
        self._clock = clock
        self._next_seq = 0
        self._frames_sent = 0
        self._vad = vad
        self._finished = False
        # Log-mel frames made but not yet routed (to the encoder, or dropped as silence):
        # columns of ``_held``, the first being mel frame ``_held_start`` of the stream.
        self._held = np.empty((model.config.n_mels, 0), dtype=np.float32)
        self._held_start = 0
        # Speech edges in mel frames, routed in order.
        self._edges: deque[tuple[SpeechEdge, int]] = deque()
        # The talkspurt being sent: its encoder, first latent frame and latents sent so far.
        self._encoder: StreamingEncoder | None = None
        if vad is None:
            self._encoder = StreamingEncoder(model)
        self._spurt_latent = 0
        self._spurt_sent = 0
        self._speech_start = False
        # Where the announced timeline stands (latent frames): the end of the last talkspurt
        # message or the time of the last keepalive.
        self._announced = 0
        self._pre_roll_frames = math.ceil(PRE_ROLL_S * FRAMES_PER_SECOND / self._stride) * (
            self._stride
        )
        self._keepalive_latents = max(1, round(KEEPALIVE_S * model.config.frame_rate_hz))

    @property
    def latency(self) -> LatencyStats:
        return self._latency

    @property
    def frames_sent(self) -> int:
        """Latent frames sent (not counting the silence DTX skipped)."""
        return self._frames_sent

    @property
    def audio_s_sent(self) -> float:
        """Audio time the messages sent so far cover, silence announced by DTX included."""
        return self._announced / self._model.config.frame_rate_hz

    @property
    def talking(self) -> bool:
        """A talkspurt is open (always, without a VAD)."""
        return self._encoder is not None

    def push(self, samples: npt.ArrayLike) -> list[CodecFrames]:
        """Add 16 kHz mono float samples; return the messages they complete (maybe none)."""
        if self._finished:
            raise StreamFinishedError("CallSender.push() after finish()")
        started = self._clock()
        if self._vad is not None:
            for event in self._vad.push(samples):
                if event.edge is SpeechEdge.START:
                    self._edges.append((SpeechEdge.START, event.sample // _HOP))
                else:
                    # Ends are cut on the latent grid, so the next talkspurt starts on it too.
                    frame = -(-event.decided_sample // _HOP)
                    self._edges.append((SpeechEdge.END, -(-frame // self._stride) * self._stride))
        self._hold(self._front_end.push(samples).features)
        messages = self._route(final=False)
        self._latency.add("encode", self._clock() - started)
        return messages

    def finish(self) -> list[CodecFrames]:
        """End of the audio: the last frames, encoded with the batch codec's end padding."""
        if self._finished:
            raise StreamFinishedError("CallSender.finish() called twice")
        self._finished = True
        started = self._clock()
        self._hold(self._front_end.finish().features)
        messages = self._route(final=True)
        self._latency.add("encode", self._clock() - started)
        return messages

    # -- routing frames (module docstring, DTX) ------------------------------------------------

    def _hold(self, features: npt.NDArray[np.float32]) -> None:
        if features.shape[1]:
            self._held = np.concatenate([self._held, features], axis=1)

    @property
    def _held_end(self) -> int:
        return self._held_start + int(self._held.shape[1])

    def _route(self, *, final: bool) -> list[CodecFrames]:
        messages: list[CodecFrames] = []
        while True:
            if self._encoder is None:
                start = self._next_edge(SpeechEdge.START)
                if start is None:
                    self._drop_silence(keep=0 if final else self._pre_roll_frames)
                    messages.extend(self._keepalive(force=final))
                    return messages
                self._open_talkspurt(start)
            end = self._next_edge(SpeechEdge.END)
            if end is None or end > self._held_end:
                # The talkspurt goes on (or its end frame is not made yet).
                codes = self._encode_held(self._held_end)
                if final:
                    codes = np.concatenate([codes, self._close_encoder()])
                messages.extend(self._pack(codes, speech_end=final and self._vad is not None))
                return messages
            self._edges.popleft()
            codes = np.concatenate([self._encode_held(end), self._close_encoder()])
            messages.extend(self._pack(codes, speech_end=True))

    def _next_edge(self, edge: SpeechEdge) -> int | None:
        """The frame of the next ``edge`` (edges of the other kind before it are moot)."""
        while self._edges and self._edges[0][0] is not edge:
            self._edges.popleft()
        return self._edges[0][1] if self._edges else None

    def _open_talkspurt(self, onset: int) -> None:
        self._edges.popleft()
        stride = self._stride
        # Everything here is on the latent grid: _held_start always is (_drop_* keep it so).
        first = max((onset - self._pre_roll_frames) // stride * stride, self._held_start)
        first = min(first, self._held_end // stride * stride)
        self._drop_frames(first - self._held_start)
        self._encoder = StreamingEncoder(self._model)
        self._spurt_latent = first // stride
        self._spurt_sent = 0
        self._speech_start = True

    def _encode_held(self, stop: int) -> npt.NDArray[np.uint8]:
        assert self._encoder is not None
        count = max(0, min(stop, self._held_end) - self._held_start)
        codes = self._encoder.push(self._held[:, :count])
        self._drop_frames(count)
        return codes

    def _close_encoder(self) -> npt.NDArray[np.uint8]:
        assert self._encoder is not None
        codes = self._encoder.finish()
        self._encoder = None
        return codes

    def _drop_frames(self, count: int) -> None:
        if count > 0:
            self._held = self._held[:, count:]
            self._held_start += count

    def _drop_silence(self, *, keep: int) -> None:
        """Silence: keep only the last ``keep`` frames (a pre-roll), cut on the latent grid."""
        cut = max(self._held_start, self._held_end - keep) // self._stride * self._stride
        self._drop_frames(cut - self._held_start)

    def _keepalive(self, *, force: bool) -> list[CodecFrames]:
        """Announce the silence up to the held frames (which may still open a talkspurt);
        ``force``: at the end of the stream, whenever the timeline moved (or nothing was sent)."""
        silent_to = self._held_start // self._stride
        moved = silent_to - self._announced
        if not (moved >= self._keepalive_latents or (force and (moved > 0 or self._next_seq == 0))):
            return []
        message = CodecFrames(
            seq=self._next_seq,
            start_time_s=silent_to / self._model.config.frame_rate_hz,
            frame_count=0,
            payload=b"",
        )
        self._next_seq += 1
        self._announced = silent_to
        return [message]

    def _pack(self, codes: npt.NDArray[np.uint8], *, speech_end: bool) -> list[CodecFrames]:
        if codes.shape[0] == 0 and not speech_end:
            return []
        if codes.shape[0] == 0:
            # The end mark with no codes left to carry: a keepalive at the talkspurt's end.
            latent = self._spurt_latent + self._spurt_sent
            message = CodecFrames(
                seq=self._next_seq,
                start_time_s=latent / self._model.config.frame_rate_hz,
                frame_count=0,
                payload=b"",
                speech_end=True,
            )
            self._next_seq += 1
            self._announced = max(self._announced, latent)
            return [message]
        config = self._model.config
        latent = self._spurt_latent + self._spurt_sent
        message = CodecFrames(
            seq=self._next_seq,
            start_time_s=latent / config.frame_rate_hz,
            frame_count=int(codes.shape[0]),
            payload=pack_codes(codes, config.latent_bits),
            speech_start=self._speech_start,
            speech_end=speech_end,
        )
        self._speech_start = False
        self._next_seq += 1
        self._spurt_sent += int(codes.shape[0])
        self._frames_sent += int(codes.shape[0])
        self._announced = latent + int(codes.shape[0])
        return [message]
