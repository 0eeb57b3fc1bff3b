"""The caller's media pipeline, sans-IO: PCM in, ``CodecFrames`` messages out.

16 kHz mono samples -> :class:`~media.features.StreamingLogMel` (Whisper's front end, running-max
normalisation) -> :class:`~media.codec_stream.StreamingEncoder` (our CSM, frame-exact with the
batch encoder) -> :func:`~codec.latent.pack_codes` -> :class:`~schemas.messages.CodecFrames`.

Each :meth:`CallSender.push` returns at most one message holding every latent frame its samples
completed, so the caller's batching (``call.batch_ms`` of audio per push) is the wire batching.
``start_time_s`` is the audio time of the message's first latent frame (latent index / latent
rate), which lets the receiver check that frames are contiguous and measure their delay.
The time each push spends computing is kept as the ``encode`` latency sample.

With a :class:`~media.sender_vad.SileroStreamingVad` (issue 16), the sender also judges its own
waveform and marks ``speech_start``/``speech_end`` on the message of the push in which the
detector saw speech begin or end (so the mark is late by at most one push, plus the codec's
look-ahead). The marks are advisory: the listener keeps its own VAD.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from codec.latent import pack_codes
from codec.model import CodecModel
from media.codec_stream import StreamingEncoder
from media.features import StreamingLogMel
from media.latency import LatencyStats
from media.sender_vad import SileroStreamingVad, SpeechEdge
from schemas.messages import CodecFrames, CodecSettings

__all__ = ["CallSender", "codec_settings"]


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
    """Turns the caller's audio into ``CodecFrames``; ``finish`` flushes the end of the stream."""

    def __init__(
        self,
        model: CodecModel,
        *,
        latency: LatencyStats | None = None,
        clock: Callable[[], float] = time.perf_counter,
        vad: SileroStreamingVad | None = None,
    ) -> None:
        self._model = model
        self._front_end = StreamingLogMel()
        self._encoder = StreamingEncoder(model)
        self._latency = latency if latency is not None else LatencyStats()
        self._clock = clock
        self._next_seq = 0
        self._frames_sent = 0
        self._vad = vad
        # Edges heard but not yet carried by a message (a push may complete no latent frame).
        self._speech_start = False
        self._speech_end = False

    @property
    def latency(self) -> LatencyStats:
        return self._latency

    @property
    def frames_sent(self) -> int:
        return self._frames_sent

    @property
    def audio_s_sent(self) -> float:
        """Audio covered by the frames sent so far."""
        return self._frames_sent / self._model.config.frame_rate_hz

    def push(self, samples: npt.ArrayLike) -> list[CodecFrames]:
        """Add 16 kHz mono float samples; return the message they complete (or none)."""
        started = self._clock()
        if self._vad is not None:
            for event in self._vad.push(samples):
                if event.edge is SpeechEdge.START:
                    self._speech_start = True
                else:
                    self._speech_end = True
        features = self._front_end.push(samples).features
        codes = self._encoder.push(features)
        messages = self._pack(codes)
        self._latency.add("encode", self._clock() - started)
        return messages

    def finish(self) -> list[CodecFrames]:
        """End of the audio: the last frames, encoded with the batch codec's end padding."""
        started = self._clock()
        if self._vad is not None and self._vad.in_speech:
            self._speech_end = True
        tail = self._front_end.finish().features
        codes = np.concatenate([self._encoder.push(tail), self._encoder.finish()])
        messages = self._pack(codes)
        self._latency.add("encode", self._clock() - started)
        return messages

    def _pack(self, codes: npt.NDArray[np.uint8]) -> list[CodecFrames]:
        if codes.shape[0] == 0:
            return []
        config = self._model.config
        message = CodecFrames(
            seq=self._next_seq,
            start_time_s=self._frames_sent / config.frame_rate_hz,
            frame_count=int(codes.shape[0]),
            payload=pack_codes(codes, config.latent_bits),
            speech_start=self._speech_start,
            speech_end=self._speech_end,
        )
        self._speech_start = self._speech_end = False
        self._next_seq += 1
        self._frames_sent += int(codes.shape[0])
        return [message]
