"""Per-utterance word errors from windowed decoding, and bootstrap intervals on ΔWER.

Whisper reads several joined utterances at once (:mod:`simulations.codec_eval`), so its
hypothesis covers a whole window. :func:`utterance_counts` splits the window's edits back onto
its utterances through the minimum-edit alignment of the joined reference with the hypothesis
(as NIST's sclite scores segments): a substitution or deletion belongs to the utterance of its
reference word, an insertion to the utterance of the reference word before it (the first
utterance for insertions before any reference word). The per-utterance edits add up exactly to
the window's edit distance.

:func:`paired_bootstrap_delta` resamples utterances with replacement, the same draw for the clean
and the decoded side (a paired bootstrap), and returns the 2.5th and 97.5th percentiles of
``(codec edits - clean edits) / reference words`` over the resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from media.features import N_MELS, FloatArray
from media.wer import WerCounts, normalized_words

BOOTSTRAP_RESAMPLES: Final = 2000
# Frames of floor value between two utterances joined into one Whisper window (0.4 s).
UTTERANCE_GAP_FRAMES: Final = 40


def utterance_windows(lengths: Sequence[int], window_frames: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` groups of utterances whose frames, with a gap of
    ``UTTERANCE_GAP_FRAMES`` between neighbours, fit ``window_frames``; an utterance longer than
    a window gets a window of its own (Whisper's loop then splits it)."""
    windows: list[tuple[int, int]] = []
    start = 0
    used = 0
    for index, length in enumerate(lengths):
        if index > start and used + UTTERANCE_GAP_FRAMES + length > window_frames:
            windows.append((start, index))
            start, used = index, length
        elif index > start:
            used += UTTERANCE_GAP_FRAMES + length
        else:
            used = length
    if start < len(lengths):
        windows.append((start, len(lengths)))
    return windows


def join_utterances(features: Sequence[FloatArray]) -> FloatArray:
    parts: list[FloatArray] = []
    for index, mel in enumerate(features):
        if index:
            floor = np.float32(mel.min())
            parts.append(np.full((N_MELS, UTTERANCE_GAP_FRAMES), floor, dtype=np.float32))
        parts.append(mel)
    return np.concatenate(parts, axis=1)


def _aligned_edit_owners(reference: Sequence[str], hypothesis: Sequence[str]) -> list[int]:
    """For each edit of a minimum alignment, the index of the reference word it is charged to
    (-1 for an insertion before the first reference word)."""
    rows, columns = len(reference) + 1, len(hypothesis) + 1
    cost = np.zeros((rows, columns), dtype=np.int64)
    cost[:, 0] = np.arange(rows)
    cost[0, :] = np.arange(columns)
    for i in range(1, rows):
        for j in range(1, columns):
            cost[i, j] = min(
                cost[i - 1, j] + 1,
                cost[i, j - 1] + 1,
                cost[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1]),
            )
    owners: list[int] = []
    i, j = rows - 1, columns - 1
    while i > 0 or j > 0:
        if i > 0 and j > 0:
            same = reference[i - 1] == hypothesis[j - 1]
            if cost[i, j] == cost[i - 1, j - 1] + (not same):
                if not same:
                    owners.append(i - 1)
                i, j = i - 1, j - 1
                continue
        if i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            owners.append(i - 1)  # deletion of reference word i - 1
            i -= 1
        else:
            owners.append(i - 1)  # insertion after reference word i - 1
            j -= 1
    return owners


def utterance_counts(references: Sequence[str], hypothesis: str) -> list[WerCounts]:
    """Edits and reference words of each of ``references``, decoded together as ``hypothesis``."""
    words: list[str] = []
    utterance_of_word: list[int] = []
    word_counts: list[int] = []
    for index, text in enumerate(references):
        normalized = normalized_words(text)
        words.extend(normalized)
        utterance_of_word.extend([index] * len(normalized))
        word_counts.append(len(normalized))
    edits = [0] * len(references)
    for owner in _aligned_edit_owners(words, normalized_words(hypothesis)):
        edits[utterance_of_word[owner] if owner >= 0 else 0] += 1
    return [
        WerCounts(edits=count, reference_words=total)
        for count, total in zip(edits, word_counts, strict=True)
    ]


def paired_bootstrap_delta(
    clean: Sequence[WerCounts],
    decoded: Sequence[WerCounts],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile interval of corpus ΔWER (decoded - clean), resampling utterances."""
    if len(clean) != len(decoded) or not clean:
        raise ValueError("clean and decoded need the same, non-zero number of utterances")
    clean_edits = np.array([item.edits for item in clean], dtype=np.float64)
    decoded_edits = np.array([item.edits for item in decoded], dtype=np.float64)
    words = np.array([item.reference_words for item in clean], dtype=np.float64)
    if words.sum() == 0:
        raise ValueError("no reference words")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(clean), size=(resamples, len(clean)))
    totals = np.maximum(words[picks].sum(axis=1), 1.0)
    deltas = (decoded_edits[picks].sum(axis=1) - clean_edits[picks].sum(axis=1)) / totals
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)
