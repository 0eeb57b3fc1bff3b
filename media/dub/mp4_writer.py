"""Write the dubbed MP4 through PyAV: H.264 video, two AAC tracks, two mov_text caption tracks.

Audio and captions are fed in step with the video (everything up to the time of the frame just
written, plus a little ahead), so the file is interleaved the way players stream it, and no
track is buffered whole. The file is written to a temporary name next to the destination and
renamed into place only when complete (:meth:`Mp4Writer.commit`); :meth:`Mp4Writer.abort`
removes it, so a failure leaves nothing behind.

Audio tracks carry ISO 639-2 language tags; the first (the dub) is the default track. Caption
tracks are MP4's native ``mov_text`` (``tx3g``), which PyAV encodes from ASS dialogue lines.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt

from media.captions import Cue
from media.dub.errors import DubWriteError

__all__ = ["AUDIO_RATE", "AudioTrack", "Mp4Writer", "SubtitleTrack", "iso639_2"]

AUDIO_RATE: Final = 48000
_AAC_FRAME: Final = 1024
_AUDIO_AHEAD_S: Final = 0.5
_ISO639_2: Final = {
    "en": "eng",
    "pt": "por",
    "es": "spa",
    "fr": "fra",
    "de": "deu",
    "it": "ita",
    "nl": "nld",
    "ru": "rus",
    "zh": "zho",
    "ja": "jpn",
    "ko": "kor",
    "ar": "ara",
    "hi": "hin",
    "pl": "pol",
}
# FFmpeg's default ASS header: the mov_text encoder needs one to open.
_ASS_HEADER: Final = (
    b"[Script Info]\r\nScriptType: v4.00+\r\nPlayResX: 384\r\nPlayResY: 288\r\n\r\n"
    b"[V4+ Styles]\r\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, "
    b"OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, "
    b"Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\r\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0"
    b"\r\n\r\n[Events]\r\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, "
    b"Effect, Text\r\n"
)


def iso639_2(language: str) -> str:
    """The three-letter code MP4 uses for a BCP 47 tag ("pt-BR" -> "por"), else "und"."""
    key = language.split("-", maxsplit=1)[0].split("_", maxsplit=1)[0].lower()
    return _ISO639_2.get(key, key if len(key) == 3 and key.isalpha() else "und")


@dataclass(frozen=True, eq=False)
class AudioTrack:
    """An audio track: ``chunks`` yields float32 arrays (channels, n) at :data:`AUDIO_RATE`."""

    language: str
    title: str
    channels: int
    chunks: Iterator[npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class SubtitleTrack:
    language: str
    title: str
    cues: Sequence[Cue]


class _AudioFeed:
    def __init__(self, container: Any, track: AudioTrack, default: bool) -> None:
        layout = "mono" if track.channels == 1 else "stereo"
        self.stream = container.add_stream("aac", rate=AUDIO_RATE, layout=layout)
        self.stream.metadata["language"] = iso639_2(track.language)
        self.stream.metadata["title"] = track.title
        self.stream.disposition = av.stream.Disposition.default if default else 0
        self._layout = layout
        self._channels = 1 if layout == "mono" else 2
        self._chunks = track.chunks
        self._pending = np.zeros((self._channels, 0), dtype=np.float32)
        self._written = 0
        self._exhausted = False

    def feed_until(self, container: Any, time_s: float | None) -> None:
        """Encode whole AAC frames up to ``time_s`` (``None``: everything, then flush)."""
        limit = None if time_s is None else round(time_s * AUDIO_RATE)
        while limit is None or self._written < limit:
            while self._pending.shape[1] < _AAC_FRAME and not self._exhausted:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._exhausted = True
                    break
                self._pending = np.concatenate([self._pending, self._shape(chunk)], axis=1)
            if self._pending.shape[1] == 0:
                break
            if self._pending.shape[1] < _AAC_FRAME and limit is not None:
                break
            block = self._pending[:, :_AAC_FRAME]
            self._pending = self._pending[:, _AAC_FRAME:]
            self._encode(container, block)
        if time_s is None:
            container.mux(self.stream.encode(None))

    def _shape(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        data = np.asarray(chunk, dtype=np.float32).reshape(-1, np.asarray(chunk).shape[-1])
        if data.shape[0] == self._channels:
            return data
        if self._channels == 1:
            mono: npt.NDArray[np.float32] = data.mean(axis=0, keepdims=True)
            return mono
        return np.repeat(data[:1], 2, axis=0)

    def _encode(self, container: Any, block: npt.NDArray[np.float32]) -> None:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(block), format="fltp", layout=self._layout
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._written
        frame.time_base = Fraction(1, AUDIO_RATE)
        self._written += block.shape[1]
        container.mux(self.stream.encode(frame))


class _SubtitleFeed:
    def __init__(self, container: Any, track: SubtitleTrack) -> None:
        self.stream = container.add_stream("mov_text")
        self.stream.metadata["language"] = iso639_2(track.language)
        self.stream.metadata["title"] = track.title
        self.stream.time_base = Fraction(1, 1000)
        self.stream.codec_context.subtitle_header = _ASS_HEADER
        self._cues = sorted(track.cues, key=lambda cue: cue.start_s)
        self._next = 0

    def feed_until(self, container: Any, time_s: float | None) -> None:
        from av.subtitles.subtitle import SubtitleSet

        while self._next < len(self._cues) and (
            time_s is None or self._cues[self._next].start_s <= time_s
        ):
            cue = self._cues[self._next]
            self._next += 1
            start = round(cue.start_s * 1000)
            end = max(round(cue.end_s * 1000), start + 1)
            # ASS dialogue fields: ReadOrder, Layer, Style, Name, MarginL/R/V, Effect, Text.
            text = "\\N".join(line.replace("\n", " ") for line in cue.lines)
            subtitle = SubtitleSet.create(
                text=f"0,0,Default,,0,0,0,,{text}".encode(), start=0, end=end - start
            )
            packet = self.stream.codec_context.encode_subtitle(subtitle)
            packet.stream = self.stream
            packet.time_base = Fraction(1, 1000)
            packet.pts = start
            packet.dts = start
            packet.duration = end - start
            container.mux(packet)


class Mp4Writer:
    """An MP4 being written: call :meth:`add_frame` per frame, then :meth:`commit`."""

    @property
    def size(self) -> tuple[int, int]:
        """The encoded picture's (width, height): the input's, cut to even numbers."""
        return self._width, self._height

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        rate: Fraction,
        audio: Sequence[AudioTrack],
        subtitles: Sequence[SubtitleTrack],
        crf: int = 16,
        preset: str = "ultrafast",
        threads: int = 1,
    ) -> None:
        self._path = path
        self._temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        self._width = width - width % 2
        self._height = height - height % 2
        self._rate = rate
        self._last_pts = -1
        try:
            self._container: Any = av.open(str(self._temporary), mode="w", format="mp4")
            video = self._container.add_stream("libx264", rate=rate)
            video.width = self._width
            video.height = self._height
            video.pix_fmt = "yuv420p"
            video.options = {"preset": preset, "crf": str(crf)}
            video.codec_context.thread_count = threads
            self._video = video
            self._audio = [
                _AudioFeed(self._container, track, default=number == 0)
                for number, track in enumerate(audio)
            ]
            self._subtitles = [_SubtitleFeed(self._container, track) for track in subtitles]
            self._feeds: list[_AudioFeed | _SubtitleFeed] = [*self._audio, *self._subtitles]
        except (av.error.FFmpegError, OSError) as error:
            self.abort()
            raise DubWriteError(f"cannot write {str(path)!r}: {error}") from error

    def add_frame(self, rgb: npt.NDArray[np.uint8], time_s: float) -> None:
        """Encode an RGB picture (converted to YUV 4:2:0 by FFmpeg's scaler)."""
        image = rgb[: self._height, : self._width]
        self._encode(
            av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24"), time_s
        )

    def add_yuv_frame(self, yuv: npt.NDArray[np.uint8], time_s: float) -> None:
        """Encode a YUV 4:2:0 picture as laid out by ``VideoFrame.to_ndarray()`` (3H/2, W)."""
        self._encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p"), time_s)

    def _encode(self, frame: Any, time_s: float) -> None:
        pts = max(round(time_s * self._rate), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = 1 / self._rate
        try:
            self._container.mux(self._video.encode(frame))
            for feed in self._feeds:
                feed.feed_until(self._container, time_s + _AUDIO_AHEAD_S)
        except (av.error.FFmpegError, OSError) as error:
            raise DubWriteError(f"cannot write {str(self._path)!r}: {error}") from error

    def commit(self, *, replace: bool) -> None:
        """Finish the file and move it into place (replacing an existing file only if asked)."""
        try:
            self._container.mux(self._video.encode(None))
            for feed in self._feeds:
                feed.feed_until(self._container, None)
            self._container.close()
        except (av.error.FFmpegError, OSError) as error:
            self.abort()
            raise DubWriteError(f"cannot write {str(self._path)!r}: {error}") from error
        try:
            if replace:
                os.replace(self._temporary, self._path)
            else:
                # link + unlink refuses to replace a file that appeared meanwhile.
                os.link(self._temporary, self._path)
                self._temporary.unlink()
        except OSError as error:
            self.abort()
            raise DubWriteError(f"cannot write {str(self._path)!r}: {error.strerror}") from error

    def abort(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        with contextlib.suppress(OSError):
            self._temporary.unlink()
