"""The file formats ``parley caption --format`` writes, besides plain SRT and WebVTT.

Pure functions from cues (and, for the spoken language, Whisper's segments) to text:

- ``json``: the transcript as openai-whisper's ``--output_format json`` shapes it (``text``,
  ``segments`` with ``id``/``start``/``end``/``text`` and per-word ``word``/``start``/``end``/
  ``probability``, ``language``); a translated track has its cues as segments, without words.
- ``txt``: one cue a line; ``tsv``: ``start<TAB>end<TAB>text`` with times in integer
  milliseconds, as openai-whisper's ``WriteTSV`` writes them. Both are made from the cues, so
  every language's files show the same moments.
- WebVTT with the words highlighted (``--word-timestamps``): as openai-whisper's
  ``--highlight_words``, one cue per word with that word in ``<u>...</u>`` while it is spoken,
  and the plain cue in the gaps between words.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass

from media.captions import Cue
from media.errors import MediaError
from media.subtitles import SubtitleFormat, format_timestamp

__all__ = [
    "FormatError",
    "OutputFormat",
    "TimedSegment",
    "TimedWord",
    "parse_formats",
    "render_highlighted_vtt",
    "render_json",
    "render_tsv",
    "render_txt",
]


class FormatError(MediaError):
    """``--format`` names something that is not an output format."""


class OutputFormat(enum.Enum):
    """A caption output; the value is the file extension and the ``--format`` name."""

    SRT = "srt"
    VTT = "vtt"
    JSON = "json"
    TXT = "txt"
    TSV = "tsv"


@dataclass(frozen=True, slots=True)
class TimedWord:
    word: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True, slots=True)
class TimedSegment:
    """One Whisper segment on the recording's clock."""

    start_s: float
    end_s: float
    text: str
    words: tuple[TimedWord, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


def parse_formats(spec: str) -> tuple[OutputFormat, ...]:
    """``"srt,vtt"`` -> (SRT, VTT); ``"all"`` -> every format; duplicates kept once."""
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    if not names:
        raise FormatError("--format names no format (expected e.g. srt,vtt or all)")
    chosen: dict[OutputFormat, None] = {}
    for name in names:
        if name == "all":
            chosen.update(dict.fromkeys(OutputFormat))
            continue
        try:
            chosen.setdefault(OutputFormat(name), None)
        except ValueError:
            known = ", ".join(f.value for f in OutputFormat)
            raise FormatError(
                f"unknown caption format {name[:20]!r} (known: {known}, all)"
            ) from None
    return tuple(chosen)


def _seconds(value: float) -> float:
    return round(value, 3)


def render_json(
    language: str,
    cues: Sequence[Cue],
    segments: Sequence[TimedSegment] | None,
    *,
    translated_from: str | None = None,
) -> str:
    """The track as JSON: Whisper's segments with words when given, else the cues."""
    shown: list[dict[str, object]] = []
    if segments is not None:
        for number, segment in enumerate(segments):
            shown.append(
                {
                    "id": number,
                    "start": _seconds(segment.start_s),
                    "end": _seconds(segment.end_s),
                    "text": segment.text,
                    "avg_logprob": segment.avg_logprob,
                    "no_speech_prob": segment.no_speech_prob,
                    "words": [
                        {
                            "word": word.word,
                            "start": _seconds(word.start_s),
                            "end": _seconds(word.end_s),
                            "probability": round(word.probability, 4),
                        }
                        for word in segment.words
                    ],
                }
            )
        text = "".join(segment.text for segment in segments).strip()
    else:
        for number, cue in enumerate(cues):
            shown.append(
                {
                    "id": number,
                    "start": _seconds(cue.start_s),
                    "end": _seconds(cue.end_s),
                    "text": cue.text,
                }
            )
        text = " ".join(cue.text for cue in cues)
    document: dict[str, object] = {"text": text, "segments": shown, "language": language}
    if translated_from is not None:
        document["translated_from"] = translated_from
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def render_txt(cues: Sequence[Cue]) -> str:
    return "".join(f"{cue.text}\n" for cue in cues)


def render_tsv(cues: Sequence[Cue]) -> str:
    rows = ["start\tend\ttext\n"]
    rows.extend(
        f"{round(1000 * cue.start_s)}\t{round(1000 * cue.end_s)}\t"
        f"{cue.text.strip().replace(chr(9), ' ')}\n"
        for cue in cues
    )
    return "".join(rows)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _highlighted(cue: Cue) -> list[tuple[float, float, str]]:
    """(start, end, payload) blocks for one cue; the plain cue when its words do not line up."""
    lines = [line.split() for line in cue.lines]
    plain = "\n".join(_escape(" ".join(tokens)) for tokens in lines if tokens)
    tokens = [token for line in lines for token in line]
    words = cue.words
    if not words or [w.word.strip() for w in words] != tokens:
        return [(cue.start_s, cue.end_s, plain)]
    blocks: list[tuple[float, float, str]] = []
    last_end = cue.start_s
    for number, word in enumerate(words):
        start, end = max(word.start_s, last_end), min(max(word.end_s, word.start_s), cue.end_s)
        if start > last_end:
            blocks.append((last_end, start, plain))
        if end <= start:
            continue
        position = 0
        shown: list[str] = []
        for line in lines:
            parts = []
            for token in line:
                escaped = _escape(token)
                parts.append(f"<u>{escaped}</u>" if position == number else escaped)
                position += 1
            if parts:
                shown.append(" ".join(parts))
        blocks.append((start, end, "\n".join(shown)))
        last_end = end
    if last_end < cue.end_s:
        blocks.append((last_end, cue.end_s, plain))
    return blocks


def render_highlighted_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT with each word underlined while it is spoken (see the module docstring)."""
    parts = ["WEBVTT\n\n"]
    number = 0
    for cue in cues:
        for start, end, payload in _highlighted(cue):
            number += 1
            parts.append(
                f"{number}\n{format_timestamp(start, SubtitleFormat.WEBVTT)} --> "
                f"{format_timestamp(end, SubtitleFormat.WEBVTT)}\n{payload}\n\n"
            )
    return "".join(parts)
