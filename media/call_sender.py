"""The caller's media pipeline, sans-IO: PCM in, ``CodecFrames`` messages out.

16 kHz mono samples -> :class:`~media.features.StreamingLogMel` (Whisper's front end, running-max
normalisation) -> :class:`~media.codec_stream.StreamingEncoder` (our CSM, frame-exact with the
batch encoder) -> :func:`~fl.latent.pack_codes` -> :class:`~schemas.messages.CodecFrames`.

Each :meth:`CallSender.push` returns at most one message holding every latent frame its samples
completed, so the caller's batching (``call.batch_ms`` of audio per push) is the wire batching.
``start_time_s`` is the audio time of the message's first latent frame (latent index / latent
rate), which lets the receiver check that frames are contiguous and measure their delay.
The time each push spends computing is kept as the ``encode`` latency sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fl.latent import pack_codes
from fl.model import CodecModel
from media.codec_stream import StreamingEncoder
from media.features import StreamingLogMel
from media.latency import LatencyStats
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
    ) -> None:
        self._model = model
        self._front_end = StreamingLogMel()
        self._encoder = StreamingEncoder(model)
        self._latency = latency if latency is not None else LatencyStats()
        self._clock = clock
        self._next_seq = 0
        self._frames_sent = 0

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
        features = self._front_end.push(samples).features
        codes = self._encoder.push(features)
        messages = self._pack(codes)
        self._latency.add("encode", self._clock() - started)
        return messages

    def finish(self) -> list[CodecFrames]:
        """End of the audio: the last frames, encoded with the batch codec's end padding."""
        started = self._clock()
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
        )
        self._next_seq += 1
        self._frames_sent += int(codes.shape[0])
        return [message]
