"""Word error rate with Whisper-style English text normalisation.

WER is the word-level Levenshtein distance (substitutions + deletions + insertions) between a
reference and a hypothesis, divided by the number of reference words. Over a corpus the edits and
the reference words are summed first (total edits / total words), so long utterances weigh more
than short ones, as in the usual ASR reporting.

Normalisation follows the spirit of Whisper's English normaliser, reduced to what a fixed
read-speech test set needs: Unicode NFKC, lower case, bracketed asides and filler words removed,
apostrophes dropped inside words ("it's" -> "its", "boys'" -> "boys") and every other punctuation
mark or symbol turned into a space. Numbers are kept as written: "fifty" and "50" differ, on the
clean and the decoded side alike, so a codec's ΔWER is not affected by that choice.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

# Hesitations that Whisper's normaliser also discards.
FILLER_WORDS: Final[frozenset[str]] = frozenset({"hmm", "mm", "mhm", "mmm", "uh", "um"})

_BRACKETED = re.compile(r"[<\[][^>\]]*[>\]]|\([^)]*\)")
_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")


class WerError(ValueError):
    """A WER was asked for where it is undefined (no reference words at all)."""


def normalize_text(text: str) -> str:
    """Lower-case ``text``, drop punctuation, brackets and fillers; words joined by one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _BRACKETED.sub(" ", text)
    text = _APOSTROPHES.sub("", text)
    # Every remaining character that is not a letter, a digit or a mark becomes a separator.
    text = "".join(char if unicodedata.category(char)[0] in "LNM" else " " for char in text)
    return " ".join(word for word in text.split() if word not in FILLER_WORDS)


def normalized_words(text: str) -> list[str]:
    """The words of ``text`` after :func:`normalize_text`."""
    return normalize_text(text).split()


def word_edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (unit cost per edit)."""
    # One row of the classic dynamic programme: previous[j] = distance(reference[:i], hyp[:j]).
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,  # reference word deleted
                    current[j - 1] + 1,  # hypothesis word inserted
                    previous[j - 1] + (ref_word != hyp_word),  # match or substitution
                )
            )
        previous = current
    return previous[-1]


@dataclass(frozen=True, slots=True)
class WerCounts:
    """Edits and reference words of one or more utterances; add them up, then take ``.wer``."""

    edits: int
    reference_words: int

    def __add__(self, other: WerCounts) -> WerCounts:
        return WerCounts(
            edits=self.edits + other.edits,
            reference_words=self.reference_words + other.reference_words,
        )

    @property
    def wer(self) -> float:
        if self.reference_words == 0:
            raise WerError("WER is undefined: the reference has no words")
        return self.edits / self.reference_words


def wer_counts(reference: str, hypothesis: str) -> WerCounts:
    """Edits and reference word count for one utterance, after normalisation."""
    reference_words = normalized_words(reference)
    return WerCounts(
        edits=word_edit_distance(reference_words, normalized_words(hypothesis)),
        reference_words=len(reference_words),
    )


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one utterance (may exceed 1 when the hypothesis inserts words)."""
    return wer_counts(reference, hypothesis).wer


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Corpus WER of ``(reference, hypothesis)`` pairs: total edits / total reference words."""
    total = WerCounts(edits=0, reference_words=0)
    for reference, hypothesis in pairs:
        total = total + wer_counts(reference, hypothesis)
    return total.wer
