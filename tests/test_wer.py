"""WER: hand-computed examples, and properties checked against an independent recursive oracle."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.wer import (
    WerCounts,
    WerError,
    corpus_wer,
    normalize_text,
    wer,
    wer_counts,
    word_edit_distance,
)


def oracle_distance(reference: tuple[str, ...], hypothesis: tuple[str, ...]) -> int:
    """Levenshtein by its recursive definition (a different algorithm from the row DP)."""

    @functools.cache
    def distance(i: int, j: int) -> int:
        if i == 0:
            return j
        if j == 0:
            return i
        return min(
            distance(i - 1, j) + 1,
            distance(i, j - 1) + 1,
            distance(i - 1, j - 1) + (reference[i - 1] != hypothesis[j - 1]),
        )

    return distance(len(reference), len(hypothesis))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The birch canoe slid on the smooth planks.", "the birch canoe slid on the smooth planks"),
        ("It's easy to tell the depth of a well.", "its easy to tell the depth of a well"),
        ("The two boys' voices echoed in the hall.", "the two boys voices echoed in the hall"),
        ("It snowed, rained, and hailed!", "it snowed rained and hailed"),
        ("  Um, the [MUSIC] cup (coughs) cracked ", "the cup cracked"),
        ("He ran half-way; 50 bonds", "he ran half way 50 bonds"),
        ("IT\u2019S", "its"),
    ],
)
def test_normalize_known_examples(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_known_wer_examples() -> None:
    # One substitution (canoe -> canoes) in 8 words.
    assert wer(
        "The birch canoe slid on the smooth planks.", "the birch canoes slid on the smooth planks"
    ) == pytest.approx(1 / 8)
    # One deletion ("dark") in 8 words; case and punctuation do not count.
    assert wer(
        "Glue the sheet to the dark blue background.", "glue the sheet to the blue background"
    ) == pytest.approx(1 / 8)
    # Two insertions in 4 words.
    assert wer("a b c d", "a x b c d y") == pytest.approx(2 / 4)
    # Empty hypothesis: every reference word deleted.
    assert wer("the cup cracked", "") == 1.0
    # Insertions can push WER above 1.
    assert wer("yes", "no no no") == 3.0
    # Swapped words: 2 substitutions.
    assert word_edit_distance(["a", "b"], ["b", "a"]) == 2
    # kitten -> sitting is 3 edits at character level; the same holds with words as tokens.
    assert word_edit_distance(list("kitten"), list("sitting")) == 3


def test_corpus_wer_sums_edits_before_dividing() -> None:
    pairs = [("a b c d", "a b c x"), ("e f", "")]
    # (1 + 2) / (4 + 2), not the mean of 1/4 and 1.
    assert corpus_wer(pairs) == pytest.approx(3 / 6)
    assert wer_counts("a b c d", "a b c x") + wer_counts("e f", "") == WerCounts(3, 6)


def test_empty_reference_is_refused() -> None:
    with pytest.raises(WerError, match="no words"):
        wer("...", "something")
    with pytest.raises(WerError):
        corpus_wer([])


words = st.lists(st.sampled_from(["the", "cup", "red", "a", "ink", "ran"]), max_size=9)


@given(words, words)
def test_distance_matches_recursive_oracle(reference: list[str], hypothesis: list[str]) -> None:
    assert word_edit_distance(reference, hypothesis) == oracle_distance(
        tuple(reference), tuple(hypothesis)
    )


@given(words, words, words)
def test_distance_is_a_metric(a: list[str], b: list[str], c: list[str]) -> None:
    assert word_edit_distance(a, a) == 0
    assert word_edit_distance(a, b) == word_edit_distance(b, a)
    assert word_edit_distance(a, c) <= word_edit_distance(a, b) + word_edit_distance(b, c)
    assert abs(len(a) - len(b)) <= word_edit_distance(a, b) <= max(len(a), len(b))


@given(st.text(min_size=1, max_size=60))
def test_wer_of_text_with_itself_is_zero(text: str) -> None:
    if normalize_text(text):
        assert wer(text, text) == 0.0
        # Normalisation is idempotent.
        assert normalize_text(normalize_text(text)) == normalize_text(text)
