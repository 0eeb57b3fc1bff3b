"""Translated text cut into pieces that are synthesized one after another, and when to start
playing them (pure: no model, no clock of its own).

Theory of operation
-------------------
A listener hears a cue's translation as soon as its *first* piece is synthesized, not the
whole cue (issue 14: mouth-to-ear). The text is cut at clause ends (``, ; : . ! ?``) into
pieces whose word budget grows geometrically (:data:`FIRST_PIECE_MAX_WORDS`, then
:data:`PIECE_GROWTH` times the words of the piece before, ...), so the first piece is short and
quick to make, and every later piece has the audio of the pieces before it to hide behind
while it is synthesized. A clause longer than the budget is cut between words into equal
parts; no word is ever cut or lost (``" ".join`` of the pieces is the text with its whitespace
normalized).

Playing a piece too early makes the utterance run dry mid-way when the next piece is late (an
underrun). :class:`PlayoutGate` decides when the pieces in hand go to the speaker: once every
piece still to make is predicted to be ready before the playout reaches it (its words and
those of the pieces before it, times the seconds of audio per word so far, times the
synthesizer's measured wall time per second of audio, with a margin, against the audio that
plays before it). A fast synthesizer starts at the first piece; a slow one (a loaded box)
waits for more audio in hand, trading latency for an unbroken utterance. Pieces handed over are
played in order by :class:`media.audio_devices.PlayoutBuffer`, as one utterance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "FIRST_PIECE_MAX_WORDS",
    "MAX_PIECE_WORDS",
    "PlayoutGate",
    "SynthesisSpeed",
    "split_for_speech",
]

#: Words in the first piece at most (about two seconds of speech).
FIRST_PIECE_MAX_WORDS: Final = 6
#: No piece grows past this (Kokoro runs at most 60 phonemes at a time anyway).
MAX_PIECE_WORDS: Final = 24
#: Each piece may hold this many times the words of the one before (budgets never shrink).
#: A piece can start playing before the next is made only if making the next takes less time
#: than playing this one: next/this <= 1 / (wall per audio second x margin). Kokoro took
#: 0.56-0.75 CPU s per audio second on the demo's sentences (two threads: about half that in
#: wall time on an idle box). The gate opens at the first piece only while synthesis runs at
#: most 1 / (1.5 x margin) = 0.22 s per second of audio: piper does (about 0.1), Kokoro does
#: not, so Kokoro's cues play whole. (The margin was 1.25, then 1.5: fresh-clone CI heard 13-52
#: playout underruns a call in the PulseAudio tests, because synthesis slows down when the other
#: side's recognizer runs after the gate has opened; an underrun is heard, a late start is not.)
PIECE_GROWTH: Final = 1.5
#: Wall seconds per second of audio assumed before a synthesizer was timed.
INITIAL_WALL_PER_AUDIO: Final = 1.0
#: Weight of a faster measurement in the smoothed speed (a slower one replaces it).
SPEED_SMOOTHING: Final = 0.5
#: A word ending in punctuation ends a clause; closing quotes and brackets may follow it.
_CLAUSE_END: Final = re.compile("[.,;:!?\u2026]+[\"'\u201d\u2019\u00bb)\\]]*$")


def _clauses(words: list[str]) -> list[list[str]]:
    clauses: list[list[str]] = [[]]
    for word in words:
        clauses[-1].append(word)
        if _CLAUSE_END.search(word):
            clauses.append([])
    return [clause for clause in clauses if clause]


def _cut(words: list[str], budget: int) -> list[list[str]]:
    """``words`` in the fewest equal parts of at most ``budget`` words."""
    parts = -(-len(words) // budget)
    size = -(-len(words) // parts)
    return [words[start : start + size] for start in range(0, len(words), size)]


def split_for_speech(
    text: str,
    *,
    first_max_words: int = FIRST_PIECE_MAX_WORDS,
    max_words: int = MAX_PIECE_WORDS,
    growth: float = PIECE_GROWTH,
) -> list[str]:
    """``text`` in pieces to synthesize in order (an empty list for a text without words)."""
    if first_max_words < 1 or max_words < first_max_words or growth < 1:
        raise ValueError("piece budgets must be positive and growing")
    pieces: list[str] = []
    budget = first_max_words
    current: list[str] = []

    def emit(words: list[str]) -> None:
        nonlocal budget
        pieces.append(" ".join(words))
        budget = min(max(int(len(words) * growth), budget), max_words)

    for clause in _clauses(text.split()):
        rest = clause
        while rest:
            if len(current) + len(rest) <= budget:
                current.extend(rest)
                break
            if current:
                emit(current)
                current = []
                continue
            # A clause longer than the budget: its first of equal parts, the rest goes on
            # under the next (larger) budget.
            part = _cut(rest, budget)[0]
            emit(part)
            rest = rest[len(part) :]
    if current:
        emit(current)
    return pieces


@dataclass(slots=True)
class SynthesisSpeed:
    """Wall seconds a synthesizer takes per second of audio (the last pieces, smoothed).

    Starts pessimistic (:data:`INITIAL_WALL_PER_AUDIO`; a node measures its synthesizer when
    it loads it, :class:`daemon.call_models.CallModels`): until it has measured anything, a
    listener waits for more audio in hand rather than risk an underrun.
    """

    wall_per_audio: float = INITIAL_WALL_PER_AUDIO
    measurements: int = 0

    def measured(self, wall_s: float, audio_s: float) -> None:
        if audio_s <= 0 or wall_s < 0:
            return
        ratio = wall_s / audio_s
        if self.measurements == 0 or ratio > self.wall_per_audio:
            # The assumption gives way to the first measurement, and a slower one is believed
            # at once (another call or the recognizer took the cores): an underrun is heard, a
            # late start is not. Faster measurements only pull the estimate down slowly.
            self.wall_per_audio = ratio
        else:
            self.wall_per_audio += SPEED_SMOOTHING * (ratio - self.wall_per_audio)
        self.measurements += 1


@dataclass(slots=True)
class PlayoutGate:
    """Whether the pieces synthesized so far may start playing (module docstring).

    ``piece_words``: the word count of every piece of the utterance, in order. Playing starts
    once no later piece is predicted to be late: for every piece still to make, the time to
    synthesize it and those before it (words x audio per word so far x wall per audio, times
    ``margin``) is at most the audio that plays before it.
    """

    piece_words: Sequence[int]
    speed: SynthesisSpeed
    #: Predicted synthesis time is multiplied by this before comparing (estimates are rough).
    margin: float = 3.0
    pieces_done: int = 0
    audio_done_s: float = 0.0
    open: bool = False

    def synthesized(self, audio_s: float) -> bool:
        """The next piece is ready (``audio_s`` long); ``True`` once playing may start."""
        self.pieces_done += 1
        self.audio_done_s += audio_s
        if not self.open:
            audio_per_word = self.audio_done_s / max(sum(self.piece_words[: self.pieces_done]), 1)
            wall_per_word = audio_per_word * self.speed.wall_per_audio * self.margin
            ahead_s = self.audio_done_s  # audio that plays before the next piece is needed
            making_s = 0.0  # synthesis time until that piece is ready
            self.open = True
            for words in self.piece_words[self.pieces_done :]:
                making_s += words * wall_per_word
                if making_s > ahead_s:
                    self.open = False
                    break
                ahead_s += words * audio_per_word
        return self.open
