"""Caption segmentation: timed words in, subtitle cues out. Pure functions, no I/O.

Theory of operation
-------------------
Captions follow common broadcast practice (docs/design.md, "Captions and languages"): at most 42
characters a line, at most two lines a cue, a cue shown for 0.8-7 s, cues never overlapping. A
:class:`CueBuilder` takes finalized words one at a time (the live call pipeline feeds it as ASR
commits words) and decides greedily when the open cue is complete: a cue closes *before* a word that
would not fit in the lines, would stretch the cue past the longest duration, follows a pause, or
follows the end of a sentence. The cue's timing is settled only then, because its end depends on the
next cue's start: the display is stretched to the shortest duration where the next cue leaves room,
cut to the longest duration, and never runs into the next cue. :func:`segment_words` is the same
builder run over a whole list.

Word times are kept as they came (``Cue.words``), so a player or a translator can align to them.
A word longer than a line (a URL read out, say) cannot be wrapped; it is cut into line-sized pieces
whose times are interpolated by character count, so every line bound holds for any input.

Times are validated at intake: a non-finite or negative time, an end before its start, or a word
that starts before the previous one is a :class:`InvalidWordTimeError` (the words come from our own
ASR, but the rule is the same for a file or a peer: a one-line error, never a bad cue).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from media.errors import MediaError
from schemas.messages import WordTime

__all__ = [
    "CaptionError",
    "CaptionLayout",
    "Cue",
    "CueBuilder",
    "InvalidWordTimeError",
    "fits_lines",
    "retime_text",
    "segment_words",
    "wrap_lines",
]

#: A word ending with one of these ends a sentence: a natural place to start a new cue.
_SENTENCE_END = re.compile("[.!?\u2026]['\"\u201d\u2019)\\]]*$")


class CaptionError(MediaError):
    """Root of caption segmentation errors."""


class InvalidWordTimeError(CaptionError):
    """A timed word is malformed or out of order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptionLayout:
    """How cues are cut. The defaults are the common practice docs/design.md names
    ("Captions and languages")."""

    max_line_chars: int = 42
    max_lines: int = 2
    min_duration_s: float = 0.8
    max_duration_s: float = 7.0
    #: A silence at least this long between two words starts a new cue.
    pause_split_s: float = 1.0
    #: End a cue at a sentence end once it has been on screen this long.
    sentence_split_min_s: float = 0.8

    def __post_init__(self) -> None:
        if self.max_line_chars < 1:
            raise ValueError(f"max_line_chars must be >= 1, got {self.max_line_chars}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {self.max_lines}")
        for name in ("min_duration_s", "max_duration_s", "pause_split_s", "sentence_split_min_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.min_duration_s <= self.max_duration_s:
            raise ValueError(
                f"need 0 < min_duration_s <= max_duration_s, got "
                f"{self.min_duration_s} and {self.max_duration_s}"
            )


@dataclass(frozen=True, slots=True)
class Cue:
    """One caption on screen: ``lines`` shown from ``start_s`` to ``end_s``; ``index`` from 1."""

    index: int
    start_s: float
    end_s: float
    lines: tuple[str, ...]
    words: tuple[WordTime, ...] = field(default=())

    @property
    def text(self) -> str:
        """The cue's text on one line."""
        return " ".join(self.lines)


def wrap_lines(tokens: Sequence[str], max_line_chars: int) -> list[str]:
    """Wrap ``tokens`` (each at most ``max_line_chars`` long) into the fewest lines.

    Greedy filling gives the fewest lines; when that is two, the break is moved to where the two
    lines are most even, which reads better than a full top line over a stub.
    """
    lines: list[str] = []
    current = ""
    for token in tokens:
        if len(token) > max_line_chars:
            raise ValueError(f"token of {len(token)} characters exceeds a {max_line_chars}-line")
        candidate = f"{current} {token}" if current else token
        if len(candidate) <= max_line_chars:
            current = candidate
        else:
            lines.append(current)
            current = token
    if current:
        lines.append(current)
    if len(lines) == 2:
        lines = _balanced_two_lines(tokens, max_line_chars)
    return lines


def _balanced_two_lines(tokens: Sequence[str], max_line_chars: int) -> list[str]:
    best: tuple[int, int] | None = None  # (longest line, split index)
    for split in range(1, len(tokens)):
        top = len(" ".join(tokens[:split]))
        bottom = len(" ".join(tokens[split:]))
        if top <= max_line_chars and bottom <= max_line_chars:
            longest = max(top, bottom)
            if best is None or longest < best[0]:
                best = (longest, split)
    if best is None:  # wrap_lines only calls this when a two-line split exists
        raise AssertionError("no two-line split")
    split = best[1]
    return [" ".join(tokens[:split]), " ".join(tokens[split:])]


def fits_lines(tokens: Sequence[str], layout: CaptionLayout) -> bool:
    """Whether ``tokens`` wrap into at most ``layout.max_lines`` lines."""
    return len(wrap_lines(tokens, layout.max_line_chars)) <= layout.max_lines


def _clean_text(text: str) -> str:
    return " ".join(text.split())


def _validate(word: WordTime, previous_start_s: float | None) -> None:
    if not (math.isfinite(word.start_s) and math.isfinite(word.end_s)):
        raise InvalidWordTimeError(f"word {word.word!r} has a non-finite time")
    if word.start_s < 0:
        raise InvalidWordTimeError(f"word {word.word!r} starts before 0 s ({word.start_s})")
    if word.end_s < word.start_s:
        raise InvalidWordTimeError(
            f"word {word.word!r} ends ({word.end_s} s) before it starts ({word.start_s} s)"
        )
    if previous_start_s is not None and word.start_s < previous_start_s:
        raise InvalidWordTimeError(
            f"word {word.word!r} starts at {word.start_s} s, before the previous word "
            f"({previous_start_s} s)"
        )


def _split_long_word(word: WordTime, max_chars: int) -> list[WordTime]:
    """Cut a word longer than a line into pieces, times interpolated by character count."""
    text = word.word
    if len(text) <= max_chars:
        return [word]
    pieces: list[WordTime] = []
    span = word.end_s - word.start_s
    for offset in range(0, len(text), max_chars):
        stop = min(offset + max_chars, len(text))
        start = word.start_s + span * offset / len(text)
        end = word.start_s + span * stop / len(text)
        pieces.append(WordTime(word=text[offset:stop], start_s=start, end_s=min(end, word.end_s)))
    return pieces


class CueBuilder:
    """Accepts finalized words one at a time and hands back each cue once it is complete.

    ``add_word`` returns the cues completed by that word (none or one); ``close_pending`` closes
    the open cue when the caller knows no word will start before a given time (live use, on a
    silence); ``finish`` closes it at the end of the stream. Cue indices count from
    ``first_index``.
    """

    def __init__(self, *, layout: CaptionLayout | None = None, first_index: int = 1) -> None:
        self._layout = layout if layout is not None else CaptionLayout()
        self._next_index = first_index
        self._pending: list[WordTime] = []
        self._last_start_s: float | None = None
        # Cues never start before this (end of the last emitted cue or a promised silence).
        self._floor_s = 0.0
        # The caller promised (close_pending) that no word starts before this.
        self._promised_s = 0.0

    @property
    def layout(self) -> CaptionLayout:
        return self._layout

    @property
    def pending_words(self) -> tuple[WordTime, ...]:
        """Words of the cue still open (a live display can show them as a partial)."""
        return tuple(self._pending)

    def add_word(self, word: WordTime) -> list[Cue]:
        """Take the next finalized word; return the cues it completes."""
        _validate(word, self._last_start_s)
        if word.start_s < self._promised_s:
            raise InvalidWordTimeError(
                f"word {word.word!r} starts at {word.start_s} s, inside a cue already closed "
                f"(up to {self._promised_s} s)"
            )
        text = _clean_text(word.word)
        self._last_start_s = word.start_s
        if not text:
            return []  # Whisper sometimes commits a bare space; nothing to show.
        completed: list[Cue] = []
        # A word may start inside a cue this builder closed itself: an over-long word is cut
        # into pieces with interpolated times, and a piece can close a cue past the start of
        # the next word. Cues never overlap, so that word is shown from the end of the cue on.
        start_s = max(word.start_s, self._floor_s)
        cleaned = WordTime(word=text, start_s=start_s, end_s=max(word.end_s, start_s))
        for piece in _split_long_word(cleaned, self._layout.max_line_chars):
            if self._pending and self._should_break_before(piece):
                completed.append(self._emit(next_start_s=piece.start_s))
            self._pending.append(piece)
        return completed

    def close_pending(self, no_word_before_s: float) -> list[Cue]:
        """Close the open cue; the caller promises no later word starts before that time."""
        if not math.isfinite(no_word_before_s):
            raise InvalidWordTimeError(f"non-finite time {no_word_before_s!r}")
        if self._pending and no_word_before_s < self._pending[-1].start_s:
            raise InvalidWordTimeError(
                f"cannot close at {no_word_before_s} s: the open cue has a word starting at "
                f"{self._pending[-1].start_s} s"
            )
        cues = [self._emit(next_start_s=no_word_before_s)] if self._pending else []
        self._floor_s = max(self._floor_s, no_word_before_s)
        self._promised_s = max(self._promised_s, no_word_before_s)
        return cues

    def finish(self) -> list[Cue]:
        """End of the stream: close the open cue, if any."""
        if not self._pending:
            return []
        return [self._emit(next_start_s=None)]

    def _should_break_before(self, word: WordTime) -> bool:
        layout = self._layout
        first, last = self._pending[0], self._pending[-1]
        tokens = [w.word for w in self._pending] + [word.word]
        if not fits_lines(tokens, layout):
            return True
        pending_end_s = max(w.end_s for w in self._pending)
        if max(word.end_s, pending_end_s) - first.start_s > layout.max_duration_s:
            return True
        if word.start_s - pending_end_s >= layout.pause_split_s:
            return True
        shown_s = pending_end_s - first.start_s
        return bool(_SENTENCE_END.search(last.word)) and shown_s >= layout.sentence_split_min_s

    def _emit(self, *, next_start_s: float | None) -> Cue:
        layout = self._layout
        words = tuple(self._pending)
        self._pending = []
        start = max(words[0].start_s, self._floor_s)
        end = max(*(w.end_s for w in words), start + layout.min_duration_s)
        end = min(end, start + layout.max_duration_s)
        if next_start_s is not None:
            end = min(end, next_start_s)
        end = max(end, start)
        cue = Cue(
            index=self._next_index,
            start_s=start,
            end_s=end,
            lines=tuple(wrap_lines([w.word for w in words], layout.max_line_chars)),
            words=words,
        )
        self._next_index += 1
        self._floor_s = end
        return cue


def segment_words(words: Iterable[WordTime], *, layout: CaptionLayout | None = None) -> list[Cue]:
    """Cut a whole sequence of timed words into cues (indices from 1)."""
    builder = CueBuilder(layout=layout)
    cues: list[Cue] = []
    for word in words:
        cues.extend(builder.add_word(word))
    cues.extend(builder.finish())
    return cues


def retime_text(
    cues: Sequence[Cue],
    texts: Sequence[str],
    *,
    layout: CaptionLayout | None = None,
) -> list[Cue]:
    """New cues carrying ``texts`` (one per cue, e.g. translations) on the source cues' timing.

    A text that does not fit a cue's lines is spread over consecutive sub-cues that share the
    source cue's time span in proportion to their characters, so the line bounds still hold.
    Translated cues have no word times (``words == ()``); indices are renumbered from 1.
    """
    layout = layout if layout is not None else CaptionLayout()
    if len(cues) != len(texts):
        raise CaptionError(f"{len(texts)} texts for {len(cues)} cues")
    result: list[Cue] = []
    for cue, text in zip(cues, texts, strict=True):
        tokens: list[str] = []
        for token in text.split():
            tokens.extend(
                token[i : i + layout.max_line_chars]
                for i in range(0, len(token), layout.max_line_chars)
            )
        if not tokens:
            continue
        lines = wrap_lines(tokens, layout.max_line_chars)
        groups = [lines[i : i + layout.max_lines] for i in range(0, len(lines), layout.max_lines)]
        total_chars = sum(len(line) for line in lines)
        span = cue.end_s - cue.start_s
        consumed = 0
        for group in groups:
            start = cue.start_s + span * consumed / total_chars
            consumed += sum(len(line) for line in group)
            end = cue.start_s + span * consumed / total_chars
            result.append(
                Cue(
                    index=len(result) + 1,
                    start_s=start,
                    end_s=min(end, cue.end_s),
                    lines=tuple(group),
                )
            )
    return result
