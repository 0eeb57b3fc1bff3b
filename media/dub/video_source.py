"""Read the input video: its properties, its frames (RGB) and its audio (48 kHz), via PyAV.

Each reader opens the file on its own, so frames and audio stream side by side without either
being held in memory whole. Every PyAV failure becomes a one-line :class:`VideoFileError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt

from media.dub.errors import VideoFileError

__all__ = [
    "MAX_VIDEO_S",
    "VideoInfo",
    "iter_audio",
    "iter_frames",
    "iter_video_frames",
    "probe_video",
]

#: The longest input accepted (the dubbed track is built in memory: 30 min is ~350 MB).
MAX_VIDEO_S: Final = 30 * 60.0
_MIN_SIDE: Final = 16


@dataclass(frozen=True, slots=True)
class VideoInfo:
    width: int
    height: int
    rate: Fraction
    duration_s: float
    audio_channels: int

    @property
    def frame_count(self) -> int:
        return max(1, round(self.duration_s * self.rate))


def _describe(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def probe_video(path: Path) -> VideoInfo:
    """The properties of ``path``, or a one-line error if it cannot be dubbed."""
    if not path.is_file():
        raise VideoFileError(
            f"{path}: {'no such file' if not path.exists() else 'not a regular file'}"
        )
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoFileError(f"{path}: it has no video stream")
            if not container.streams.audio:
                raise VideoFileError(f"{path}: it has no audio stream (nothing to translate)")
            video = container.streams.video[0]
            audio = container.streams.audio[0]
            rate = video.average_rate or video.guessed_rate or Fraction(25)
            if container.duration is not None:
                duration = container.duration / av.time_base
            elif video.duration is not None and video.time_base is not None:
                duration = float(video.duration * video.time_base)
            else:
                raise VideoFileError(f"{path}: its duration is unknown")
            width, height = int(video.codec_context.width), int(video.codec_context.height)
            channels = int(audio.codec_context.channels or 1)
    except VideoFileError:
        raise
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoFileError(f"{path}: not a readable video ({_describe(error)})") from error
    if min(width, height) < _MIN_SIDE:
        raise VideoFileError(f"{path}: a {width}x{height} picture is too small")
    if not (math.isfinite(duration) and duration > 0):
        raise VideoFileError(f"{path}: it is empty")
    if duration > MAX_VIDEO_S:
        raise VideoFileError(
            f"{path}: {duration / 60:.0f} min is longer than the {MAX_VIDEO_S / 60:.0f} min limit"
        )
    return VideoInfo(width, height, Fraction(rate), float(duration), min(channels, 2))


def iter_video_frames(path: Path, *, threads: int = 1) -> Iterator[tuple[Any, float]]:
    """Every frame of the first video stream as (``av.VideoFrame``, time in seconds)."""
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            stream: Any = container.streams.video[0]
            stream.thread_count = threads
            for frame in container.decode(stream):
                yield frame, float(frame.time) if frame.time is not None else 0.0
    except (av.error.FFmpegError, OSError) as error:
        raise VideoFileError(f"{path}: cannot decode its video ({_describe(error)})") from error


def iter_frames(path: Path, *, threads: int = 1) -> Iterator[tuple[npt.NDArray[np.uint8], float]]:
    """Every frame of the first video stream as (RGB array, time in seconds)."""
    for frame, time_s in iter_video_frames(path, threads=threads):
        yield frame.to_ndarray(format="rgb24"), time_s


def iter_audio(path: Path, *, rate: int, channels: int) -> Iterator[npt.NDArray[np.float32]]:
    """The first audio stream as float32 (channels, n) chunks at ``rate``."""
    layout = "mono" if channels == 1 else "stereo"
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().astype(np.float32, copy=False)
            for out in resampler.resample(None):
                yield out.to_ndarray().astype(np.float32, copy=False)
    except (av.error.FFmpegError, OSError) as error:
        raise VideoFileError(f"{path}: cannot decode its audio ({_describe(error)})") from error
