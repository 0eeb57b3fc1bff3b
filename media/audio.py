"""Audio file input: any container FFmpeg reads (WAV, FLAC, MP3, video) -> 16 kHz mono float32.

PyAV decodes and FFmpeg's resampler converts rate and layout, so ASR, the codec and captions all
see one format, the one Whisper's front end expects. Every PyAV/OS failure becomes an
``AudioFileError`` naming the file; a file that decodes to nothing audible is a
``SilentAudioError`` because transcribing it would only invite Whisper to hallucinate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import av
import av.error
import numpy as np

from media.errors import AudioFileError, SilentAudioError
from media.features import SAMPLE_RATE, FloatArray

# About 10 LSB of 16-bit audio: below this peak a file carries no signal, only dither.
SILENCE_PEAK: Final = 10.0 ** (-70.0 / 20.0)
# A named bound on what one file may expand to (3 h of 16 kHz float32 is ~690 MB).
MAX_AUDIO_SECONDS: Final = 3 * 3600.0


def load_audio(
    path: str | os.PathLike[str],
    *,
    silence_peak: float = SILENCE_PEAK,
    max_seconds: float = MAX_AUDIO_SECONDS,
) -> FloatArray:
    """Decode the first audio stream of ``path`` to 16 kHz mono float32 in [-1, 1].

    Raises ``AudioFileError`` if the file is missing, unreadable, not media, has no audio
    stream or is longer than ``max_seconds``; ``SilentAudioError`` if its peak amplitude is at
    most ``silence_peak``. Packets that fail to decode in an otherwise good file are skipped
    (lossy streams often carry a damaged packet), but a file where nothing decodes is an error.
    """
    file_path = Path(path)
    if not file_path.is_file():
        reason = "no such file" if not file_path.exists() else "not a regular file"
        raise AudioFileError(file_path, reason)
    max_samples = int(max_seconds * SAMPLE_RATE)
    try:
        audio, skipped_packets = _decode(file_path, max_samples)
    except AudioFileError:
        raise
    except av.error.FFmpegError as error:
        raise AudioFileError(file_path, _describe_ffmpeg_error(error)) from error
    except (OSError, MemoryError) as error:
        raise AudioFileError(file_path, f"{type(error).__name__}: {error}") from error
    if audio.shape[0] == 0:
        if skipped_packets:
            raise AudioFileError(file_path, f"none of its {skipped_packets} audio packets decode")
        raise SilentAudioError(file_path, 0.0)
    peak = float(np.max(np.abs(audio)))
    if peak <= silence_peak:
        raise SilentAudioError(file_path, peak)
    return audio


def _decode(file_path: Path, max_samples: int) -> tuple[FloatArray, int]:
    chunks: list[FloatArray] = []
    total = 0
    skipped_packets = 0
    with av.open(str(file_path), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioFileError(file_path, "it has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                skipped_packets += 1
                continue
            for frame in frames:
                # Timestamps of damaged streams jump around; the resampler needs none.
                frame.pts = None
                for resampled in resampler.resample(frame):
                    chunk = resampled.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    total += chunk.shape[0]
                    if total > max_samples:
                        raise AudioFileError(
                            file_path, f"longer than the {max_samples / SAMPLE_RATE:.0f} s limit"
                        )
                    chunks.append(chunk)
        for resampled in resampler.resample(None):
            chunks.append(resampled.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    if not chunks:
        return np.empty(0, dtype=np.float32), skipped_packets
    audio = np.concatenate(chunks)[:max_samples]
    return np.clip(audio, -1.0, 1.0, out=audio), skipped_packets


def _describe_ffmpeg_error(error: av.error.FFmpegError) -> str:
    # PyAV's str() repeats the file name and errno; the strerror is the useful part.
    message = getattr(error, "strerror", None) or str(error)
    return " ".join(str(message).split()) or type(error).__name__
