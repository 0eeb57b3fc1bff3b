"""Opus at a given bitrate, as the baseline the speech codec is measured against.

The codec's claim is "Whisper reads our frames as well as it reads the original, at a bitrate
where Opus cannot keep up"; so the baseline runs real libopus (through PyAV's FFmpeg build) on the
same 16 kHz audio, and the decoded audio goes through the same front end and the same Whisper.

Bitrate is *measured*, not assumed: the sum of the Opus packet sizes (TOC byte included, no
container) over the audio's duration. libopus does not go below about 6 kb/s for speech (asking
for less gives the same packets as asking for 6 kb/s, about 5-6 kb/s in practice), so lower
settings are refused rather than silently reported at a bitrate they do not have.

FFmpeg's libopus decoder always produces 48 kHz and already drops the encoder's pre-skip (the
decoder takes it from the OpusHead extradata), so the output is resampled back to 16 kHz and
trimmed to the input length; it lines up with the input sample for sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import av
import av.error
import numpy as np
import numpy.typing as npt

from media.errors import MediaError
from media.features import SAMPLE_RATE, FloatArray, as_waveform

OPUS_MIN_BITRATE_BPS: Final = 6_000
OPUS_MAX_BITRATE_BPS: Final = 510_000
# Opus frame durations libopus accepts, in ms (2.5 and 5 ms are not useful for speech here).
OPUS_FRAME_MS: Final = (10, 20, 40, 60)
DEFAULT_FRAME_MS: Final = 20


class OpusError(MediaError):
    """Opus could not encode or decode: bad settings, or libopus missing from PyAV's FFmpeg."""


@dataclass(frozen=True, slots=True, eq=False)
class OpusResult:
    """Decoded audio (16 kHz float32, same length as the input) and what it cost on the wire."""

    audio: FloatArray
    payload_bytes: int
    packets: int
    duration_s: float

    @property
    def kbps(self) -> float:
        """Measured bitrate: payload bits per second of audio, in kb/s."""
        return self.payload_bytes * 8.0 / self.duration_s / 1000.0


def opus_round_trip(
    audio: npt.ArrayLike,
    *,
    bitrate_bps: int,
    frame_ms: int = DEFAULT_FRAME_MS,
) -> OpusResult:
    """Encode 16 kHz mono ``audio`` with libopus (VoIP mode) at ``bitrate_bps`` and decode it."""
    if not OPUS_MIN_BITRATE_BPS <= bitrate_bps <= OPUS_MAX_BITRATE_BPS:
        raise OpusError(
            f"Opus bitrate must be {OPUS_MIN_BITRATE_BPS}-{OPUS_MAX_BITRATE_BPS} b/s, "
            f"got {bitrate_bps}"
        )
    if frame_ms not in OPUS_FRAME_MS:
        raise OpusError(f"Opus frame duration must be one of {OPUS_FRAME_MS} ms, got {frame_ms}")
    waveform = as_waveform(audio)
    if waveform.shape[0] == 0:
        raise OpusError("cannot encode empty audio")
    try:
        packets, extradata = _encode(waveform, bitrate_bps, frame_ms)
        decoded = _decode(packets, extradata)
    except av.error.FFmpegError as error:
        detail = getattr(error, "strerror", None) or str(error)
        raise OpusError(f"libopus failed: {' '.join(str(detail).split())}") from error
    except ValueError as error:  # includes av.codec.codec.UnknownCodecError
        raise OpusError(f"libopus unavailable or misconfigured: {error}") from error
    n = waveform.shape[0]
    if decoded.shape[0] < n:
        decoded = np.pad(decoded, (0, n - decoded.shape[0]))
    return OpusResult(
        audio=np.clip(decoded[:n], -1.0, 1.0).astype(np.float32),
        payload_bytes=sum(len(packet) for packet in packets),
        packets=len(packets),
        duration_s=n / SAMPLE_RATE,
    )


def _encode(waveform: FloatArray, bitrate_bps: int, frame_ms: int) -> tuple[list[bytes], bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = SAMPLE_RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bitrate_bps
    encoder.options = {"application": "voip", "frame_duration": str(frame_ms)}
    encoder.open()
    frame_size = int(encoder.frame_size)
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767.0).astype(np.int16)
    pcm = np.pad(pcm, (0, -pcm.shape[0] % frame_size))
    packets: list[bytes] = []
    for start in range(0, pcm.shape[0], frame_size):
        frame = av.AudioFrame.from_ndarray(
            pcm[None, start : start + frame_size], format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        packets.extend(bytes(packet) for packet in encoder.encode(frame))
    packets.extend(bytes(packet) for packet in encoder.encode(None))
    return packets, bytes(encoder.extradata or b"")


def _decode(packets: list[bytes], extradata: bytes) -> FloatArray:
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "mono"
    decoder.extradata = extradata
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks: list[FloatArray] = []

    def collect(frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            frame.pts = None
            for resampled in resampler.resample(frame):
                chunks.append(resampled.to_ndarray().reshape(-1).astype(np.float32))

    for payload in packets:
        collect(decoder.decode(av.Packet(payload)))
    collect(decoder.decode(None))
    for resampled in resampler.resample(None):
        chunks.append(resampled.to_ndarray().reshape(-1).astype(np.float32))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks)
