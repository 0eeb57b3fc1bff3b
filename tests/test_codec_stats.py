"""Per-utterance edits from a windowed hypothesis, the paired bootstrap, and the unseen harness's
bitrate bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.entropy import encode_payload, fit_prior
from media.wer import WerCounts, normalized_words, word_edit_distance
from simulations.codec_stats import paired_bootstrap_delta, utterance_counts
from simulations.codec_unseen import UNSEEN_SPEAKERS, frames_per_payload, payload_bits, sent_runs
from simulations.corpus import DEFAULT_SPEAKERS

WORDS = ["a", "b", "c", "d", "e"]


def test_edits_land_on_the_utterance_they_belong_to() -> None:
    counts = utterance_counts(["the cat sat", "on the mat", "end"], "the cat sat in the mat end")
    assert counts == [WerCounts(0, 3), WerCounts(1, 3), WerCounts(0, 1)]
    # A dropped utterance is all deletions, charged to it alone.
    counts = utterance_counts(["one two", "three four", "five"], "one two five")
    assert counts == [WerCounts(0, 2), WerCounts(2, 2), WerCounts(0, 1)]
    # Insertions before every reference word go to the first utterance.
    assert utterance_counts(["x", "y"], "q x y")[0] == WerCounts(1, 1)


@settings(max_examples=150, deadline=None)
@given(
    references=st.lists(st.lists(st.sampled_from(WORDS), max_size=5), min_size=1, max_size=4),
    hypothesis=st.lists(st.sampled_from(WORDS), max_size=14),
)
def test_per_utterance_edits_add_up_to_the_edit_distance(
    references: list[list[str]], hypothesis: list[str]
) -> None:
    texts = [" ".join(words) for words in references]
    counts = utterance_counts(texts, " ".join(hypothesis))
    joined = [word for text in texts for word in normalized_words(text)]
    assert sum(c.edits for c in counts) == word_edit_distance(joined, hypothesis)
    assert [c.reference_words for c in counts] == [len(words) for words in references]


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_utterances() -> None:
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[list[WerCounts], list[WerCounts]]:
        clean = [WerCounts(int(rng.integers(0, 2)), 10) for _ in range(n)]
        decoded = [WerCounts(c.edits + int(rng.integers(0, 3)), 10) for c in clean]
        return clean, decoded

    clean, decoded = sample(40)
    low, high = paired_bootstrap_delta(clean, decoded)
    delta = (sum(d.edits for d in decoded) - sum(c.edits for c in clean)) / 400
    assert low <= delta <= high
    assert low > 0  # every utterance got worse or stayed: the interval excludes zero
    clean_big, decoded_big = sample(400)
    big_low, big_high = paired_bootstrap_delta(clean_big, decoded_big)
    assert big_high - big_low < high - low
    same = paired_bootstrap_delta(clean, clean)
    assert same == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap_delta(clean, decoded[:-1])


def test_unseen_speakers_never_overlap_the_training_voices() -> None:
    trained = {(spec.engine, spec.voice.split("+")[0]) for spec in DEFAULT_SPEAKERS}
    unseen = {(spec.engine, spec.voice) for spec in UNSEEN_SPEAKERS}
    assert len(UNSEEN_SPEAKERS) >= 6
    assert len({spec.engine for spec in UNSEEN_SPEAKERS}) >= 2
    assert not {spec.id for spec in UNSEEN_SPEAKERS} & {spec.id for spec in DEFAULT_SPEAKERS}
    # No training voice reappears with the same espeak variant (accent + variant) or name.
    trained_full = {(spec.engine, spec.voice) for spec in DEFAULT_SPEAKERS}
    assert not unseen & trained_full
    assert trained  # the flite/piper training voices are not re-used by name either
    assert all(
        spec.voice not in {"awb", "rms", "slt", "kal16", "kal", "joe"} for spec in UNSEEN_SPEAKERS
    )


def test_payload_bookkeeping_is_exact() -> None:
    assert frames_per_payload(4) == 3 and frames_per_payload(8) == 2 and frames_per_payload(10) == 1
    codes = np.random.default_rng(1).integers(0, 8, size=(7, 32)).astype(np.uint8)
    # Fixed rate: 7 frames in payloads of 3, 3, 1, each 32 x 3 bits = 12 bytes a frame.
    assert payload_bits(codes, bits=3, per_payload=3, prior=None) == 7 * 96
    prior = fit_prior([codes], bits=3, latent_dim=32)
    expected = sum(
        8 * len(encode_payload(codes[i : i + 3], bits=3, prior=prior)) for i in (0, 3, 6)
    )
    assert payload_bits(codes, bits=3, per_payload=3, prior=prior) == expected
    assert sent_runs(np.array([0, 1, 1, 0, 1], dtype=bool)) == [(1, 3), (4, 5)]
    assert sent_runs(np.array([1, 1], dtype=bool)) == [(0, 2)]
    assert sent_runs(np.zeros(3, dtype=bool)) == []
