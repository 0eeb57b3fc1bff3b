"""SRT and WebVTT writers: whole documents, and live files that grow one cue at a time.

A call's transcript is written while the call runs (docs/design.md, "Calls"), so a crash must leave
a file a player can still read up to the last cue. :class:`LiveSubtitleWriter` therefore writes the
header when it opens the file and then each cue as one complete block in a single ``write`` on an
``O_APPEND`` descriptor, followed by ``fsync``: the file on disk is always a whole document (the
formats have no trailer), at worst missing the cue being written at the moment of the crash.

Translated tracks sit beside the original with the language in the name, ``call.en.vtt`` and
``call.pt.vtt`` (:func:`track_path`), the convention players use to offer a track per language.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from common.closing import ClosedOnExit
from media.captions import Cue
from media.errors import MediaError

__all__ = [
    "CaptionTracks",
    "LiveSubtitleWriter",
    "SubtitleError",
    "SubtitleFormat",
    "format_timestamp",
    "open_caption_tracks",
    "render_cue",
    "render_document",
    "track_path",
]

#: A BCP 47-ish language tag; also keeps a track name from escaping its folder.
# fullmatch, not match with "$": "$" also matches before a trailing newline ("pt\n").
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
#: The longest time a timestamp can show (HH is two digits in SRT).
MAX_TIMESTAMP_S = 100 * 3600 - 0.001


class SubtitleError(MediaError):
    """A subtitle file could not be written, or a cue cannot be put in one."""


class SubtitleFormat(enum.Enum):
    """The two caption file formats; the value is the file extension."""

    SRT = "srt"
    WEBVTT = "vtt"


def format_timestamp(seconds: float, subtitle_format: SubtitleFormat) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT), rounded to the millisecond."""
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TIMESTAMP_S:
        raise SubtitleError(f"time {seconds!r} s cannot be written as a subtitle timestamp")
    total_ms = round(seconds * 1000)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    separator = "," if subtitle_format is SubtitleFormat.SRT else "."
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _payload_lines(cue: Cue, subtitle_format: SubtitleFormat) -> list[str]:
    # A blank line ends a cue in both formats, so whitespace runs (newlines included) collapse.
    lines = [" ".join(line.split()) for line in cue.lines]
    lines = [line for line in lines if line]
    if not lines:
        raise SubtitleError(f"cue {cue.index} has no text")
    if subtitle_format is SubtitleFormat.WEBVTT:
        # WebVTT cue text is markup: '&' and '<' start entities and tags, and escaping '>'
        # keeps a literal "-->" from reading as a timing line.
        lines = [
            line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for line in lines
        ]
    return lines


def render_cue(cue: Cue, subtitle_format: SubtitleFormat, *, number: int) -> str:
    """One cue block, ending with the blank line that separates it from the next."""
    if cue.end_s < cue.start_s:
        raise SubtitleError(f"cue {cue.index} ends ({cue.end_s} s) before it starts")
    timing = (
        f"{format_timestamp(cue.start_s, subtitle_format)} --> "
        f"{format_timestamp(cue.end_s, subtitle_format)}"
    )
    body = "\n".join(_payload_lines(cue, subtitle_format))
    return f"{number}\n{timing}\n{body}\n\n"


def _header(subtitle_format: SubtitleFormat) -> str:
    return "WEBVTT\n\n" if subtitle_format is SubtitleFormat.WEBVTT else ""


def render_document(cues: Iterable[Cue], subtitle_format: SubtitleFormat) -> str:
    """A whole SRT or WebVTT document; cues are numbered 1, 2, ... in the order given."""
    blocks = [_header(subtitle_format)]
    blocks.extend(
        render_cue(cue, subtitle_format, number=number) for number, cue in enumerate(cues, 1)
    )
    return "".join(blocks)


def track_path(base: Path, language: str, subtitle_format: SubtitleFormat) -> Path:
    """``call`` + ``pt`` + WebVTT -> ``call.pt.vtt`` (an existing suffix on ``base`` is kept)."""
    if not _LANGUAGE_TAG.fullmatch(language):
        raise SubtitleError(f"{language!r} is not a language tag (expected e.g. 'en' or 'pt-BR')")
    return base.with_name(f"{base.name}.{language}.{subtitle_format.value}")


class LiveSubtitleWriter(ClosedOnExit):
    """An SRT or WebVTT file that grows by one durable cue per :meth:`write_cue`.

    Opening truncates the file. Cues must come in time order without overlapping (the caption
    builder guarantees it; the writer checks, because a player drops out-of-order cues silently).
    """

    def __init__(self, path: Path, subtitle_format: SubtitleFormat, *, mode: int = 0o600) -> None:
        self._path = path
        self._format = subtitle_format
        self._count = 0
        self._last_end_s = 0.0
        try:
            self._fd: int | None = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, mode
            )
            # O_CREAT's mode passes through the umask, and an existing file keeps its own.
            os.fchmod(self._fd, mode)
        except OSError as error:
            raise SubtitleError(
                f"cannot open {str(path)!r} for writing: {error.strerror}"
            ) from error
        self._append(_header(subtitle_format))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def cue_count(self) -> int:
        return self._count

    def write_cue(self, cue: Cue) -> None:
        """Append ``cue`` and make it durable before returning."""
        if cue.start_s < self._last_end_s:
            raise SubtitleError(
                f"cue {cue.index} starts at {cue.start_s} s, before the previous cue ends "
                f"({self._last_end_s} s)"
            )
        block = render_cue(cue, self._format, number=self._count + 1)
        self._append(block)
        self._count += 1
        self._last_end_s = cue.end_s

    def _append(self, text: str) -> None:
        if self._fd is None:
            raise SubtitleError(f"{str(self._path)!r} is already closed")
        data = text.encode("utf-8")
        try:
            # One write per block: the file never holds half a cue (short writes only happen
            # on a full disk, reported below).
            written = os.write(self._fd, data)
            os.fsync(self._fd)
        except OSError as error:
            raise SubtitleError(f"cannot write {str(self._path)!r}: {error.strerror}") from error
        if written != len(data):
            raise SubtitleError(f"short write to {str(self._path)!r} (disk full?)")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CaptionTracks(ClosedOnExit):
    """One live writer per (language, format): the original track and its translations."""

    def __init__(self, writers: dict[tuple[str, SubtitleFormat], LiveSubtitleWriter]) -> None:
        self._writers = writers

    @property
    def paths(self) -> list[Path]:
        return [writer.path for writer in self._writers.values()]

    def write_cue(self, language: str, cue: Cue) -> None:
        """Append ``cue`` to every format of ``language``'s track."""
        targets = [w for (lang, _), w in self._writers.items() if lang == language]
        if not targets:
            raise SubtitleError(f"no caption track open for language {language!r}")
        for writer in targets:
            writer.write_cue(cue)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def open_caption_tracks(
    base: Path,
    languages: Sequence[str],
    formats: Sequence[SubtitleFormat] = (SubtitleFormat.WEBVTT, SubtitleFormat.SRT),
) -> CaptionTracks:
    """Open ``base.<lang>.<ext>`` for every language and format, e.g. ``call.en.vtt``."""
    writers: dict[tuple[str, SubtitleFormat], LiveSubtitleWriter] = {}
    try:
        for language in dict.fromkeys(languages):
            for subtitle_format in dict.fromkeys(formats):
                path = track_path(base, language, subtitle_format)
                writers[(language, subtitle_format)] = LiveSubtitleWriter(path, subtitle_format)
    except SubtitleError:
        for writer in writers.values():
            writer.close()
        raise
    return CaptionTracks(writers)
