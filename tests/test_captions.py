"""Caption segmentation: every common-practice bound, checked as properties over any word stream."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.captions import (
    CaptionLayout,
    Cue,
    CueBuilder,
    InvalidWordTimeError,
    retime_text,
    segment_words,
    wrap_lines,
)
from media.errors import MediaError
from schemas.messages import WordTime

LAYOUT = CaptionLayout()

_word_text = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABC'.,?!-é"), min_size=1, max_size=50
)


@st.composite
def word_streams(draw: st.DrawFn) -> list[WordTime]:
    count = draw(st.integers(min_value=0, max_value=60))
    words = []
    t = draw(st.floats(min_value=0, max_value=5))
    for _ in range(count):
        t += draw(
            st.one_of(
                st.floats(min_value=0, max_value=0.4),
                st.floats(min_value=0, max_value=3),
                st.just(0.0),
            )
        )
        duration = draw(
            st.one_of(st.floats(min_value=0, max_value=0.8), st.floats(min_value=0, max_value=12))
        )
        words.append(WordTime(word=draw(_word_text), start_s=t, end_s=t + duration))
    return words


def _check_invariants(
    words: list[WordTime], cues: list[Cue], closed_at: float | None = None
) -> None:
    for i, cue in enumerate(cues):
        assert cue.index == i + 1
        assert 1 <= len(cue.lines) <= LAYOUT.max_lines
        assert all(0 < len(line) <= LAYOUT.max_line_chars for line in cue.lines)
        # The lines are exactly the cue's words, wrapped.
        assert " ".join(cue.lines) == " ".join(w.word for w in cue.words)
        assert cue.start_s <= cue.end_s
        assert cue.end_s - cue.start_s <= LAYOUT.max_duration_s + 1e-9
        assert cue.start_s == cue.words[0].start_s
        next_start = cues[i + 1].start_s if i + 1 < len(cues) else None
        if next_start is not None:
            assert cue.end_s <= next_start  # no overlap, monotonic
        # Shortest duration wherever the next cue leaves room for it.
        room = LAYOUT.min_duration_s if next_start is None else next_start - cue.start_s
        if closed_at is not None and cue.start_s <= closed_at:
            room = min(room, closed_at - cue.start_s)  # the caller closed the cue there
        assert cue.end_s - cue.start_s >= min(LAYOUT.min_duration_s, room) - 1e-9
        # The cue stays up until its last word is spoken, unless a bound forbids it.
        spoken_until = max(w.end_s for w in cue.words)
        limit = cue.start_s + LAYOUT.max_duration_s
        if next_start is not None:
            limit = min(limit, next_start)
        if closed_at is not None and cue.start_s <= closed_at:
            limit = min(limit, closed_at)
        assert cue.end_s >= min(spoken_until, limit) - 1e-9
    # All words kept, in order, with their times.
    kept = [w for cue in cues for w in cue.words]
    originals = [w for w in words if w.word.strip()]
    if all(len(w.word) <= LAYOUT.max_line_chars for w in originals):
        assert kept == originals
    assert "".join(w.word for w in kept) == "".join(w.word for w in originals)
    for piece in kept:
        assert piece.start_s <= piece.end_s


@settings(max_examples=100, deadline=None)
@given(word_streams())
def test_segment_words_invariants(words: list[WordTime]) -> None:
    _check_invariants(words, segment_words(words))


@settings(max_examples=60, deadline=None)
@given(word_streams())
def test_incremental_builder_emits_each_cue_before_the_word_that_follows_it(
    words: list[WordTime],
) -> None:
    builder = CueBuilder()
    cues: list[Cue] = []
    for word in words:
        completed = builder.add_word(word)
        assert len(completed) <= 2  # only an over-long word can close two cues at once
        for cue in completed:
            if len(word.word) > 42:
                # An over-long word is cut into line-sized pieces: a cue may close on one of
                # its own pieces, but never after the word itself.
                assert cue.end_s <= word.end_s
            else:
                assert cue.end_s <= word.start_s
        cues.extend(completed)
        # The word just added is still open: it belongs to no emitted cue yet.
        if word.word.strip() and len(word.word) <= 42:
            last = builder.pending_words[-1]
            # Its start moves only past a cue that an over-long word's piece closed.
            assert last.start_s == word.start_s or last.start_s == cues[-1].end_s
            assert (last.word, last.end_s) == (word.word, max(word.end_s, last.start_s))
    cues.extend(builder.finish())
    assert cues == segment_words(words)


@settings(max_examples=60, deadline=None)
@given(word_streams(), st.floats(min_value=0, max_value=3))
def test_close_pending_on_silence_keeps_invariants(words: list[WordTime], silence: float) -> None:
    # A live caller closes the open cue when it sees a silence; later words start after it.
    builder = CueBuilder()
    cues: list[Cue] = []
    half = len(words) // 2
    for word in words[:half]:
        cues.extend(builder.add_word(word))
    pending = builder.pending_words
    close_at = (max(w.end_s for w in words[:half]) if half else 0.0) + silence
    closed = builder.close_pending(close_at)
    assert len(closed) == (1 if pending else 0)
    cues.extend(closed)
    shifted = [
        WordTime(word=w.word, start_s=w.start_s + close_at, end_s=w.end_s + close_at)
        for w in words[half:]
    ]
    for word in shifted:
        cues.extend(builder.add_word(word))
    cues.extend(builder.finish())
    _check_invariants(words[:half] + shifted, cues, closed_at=close_at if closed else None)
    if closed:
        assert closed[0].end_s <= close_at


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abcdefg", min_size=1, max_size=42), min_size=1, max_size=30))
def test_wrap_lines_uses_the_fewest_lines_like_textwrap(tokens: list[str]) -> None:
    lines = wrap_lines(tokens, 42)
    # textwrap's greedy fill (no word breaking) is the classic minimal-line-count oracle.
    oracle = textwrap.wrap(
        " ".join(tokens), width=42, break_long_words=False, break_on_hyphens=False
    )
    assert len(lines) == len(oracle)
    assert " ".join(lines) == " ".join(tokens)
    assert all(len(line) <= 42 for line in lines)
    if len(lines) == 2:
        # Balanced: no other split point gives a shorter longest line.
        best = min(
            max(len(" ".join(tokens[:k])), len(" ".join(tokens[k:]))) for k in range(1, len(tokens))
        )
        assert max(len(line) for line in lines) == best


def test_a_spoken_paragraph_is_cut_at_sentences_and_line_limits() -> None:
    text = (
        "Good morning everyone. Today we will talk about federated learning between "
        "trusted peers and how the codec improves over time."
    )
    words = [
        WordTime(word=token, start_s=0.3 * i, end_s=0.3 * i + 0.25)
        for i, token in enumerate(text.split())
    ]
    cues = segment_words(words)
    _check_invariants(words, cues)
    assert cues[0].lines == ("Good morning everyone.",)
    assert cues[0].end_s == pytest.approx(0.85)  # its last word's end: longer than 0.8 s
    assert all(cue.text for cue in cues)
    assert " ".join(cue.text for cue in cues) == text


def test_short_lone_word_is_shown_for_the_minimum_duration() -> None:
    cues = segment_words([WordTime(word="Yes.", start_s=1.0, end_s=1.2)])
    assert cues == [
        Cue(
            index=1,
            start_s=1.0,
            end_s=pytest.approx(1.8),
            lines=("Yes.",),
            words=(WordTime(word="Yes.", start_s=1.0, end_s=1.2),),
        )
    ]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([WordTime(word="a", start_s=1.0, end_s=0.5)], "ends"),
        ([WordTime(word="a", start_s=float("nan"), end_s=1.0)], "non-finite"),
        ([WordTime(word="a", start_s=-1.0, end_s=1.0)], "before 0"),
        (
            [WordTime(word="a", start_s=2.0, end_s=2.5), WordTime(word="b", start_s=1.0, end_s=3)],
            "before the previous word",
        ),
    ],
)
def test_bad_word_times_get_one_line_errors(words: list[WordTime], message: str) -> None:
    with pytest.raises(InvalidWordTimeError, match=message) as info:
        segment_words(words)
    assert isinstance(info.value, MediaError)
    assert "\n" not in str(info.value)


def test_word_inside_a_closed_cue_is_refused() -> None:
    builder = CueBuilder()
    builder.add_word(WordTime(word="hello", start_s=0.0, end_s=0.4))
    builder.close_pending(2.0)
    with pytest.raises(InvalidWordTimeError, match="already closed"):
        builder.add_word(WordTime(word="late", start_s=1.5, end_s=1.8))


def test_layout_is_validated() -> None:
    with pytest.raises(ValueError, match="min_duration_s"):
        CaptionLayout(min_duration_s=8.0, max_duration_s=7.0)
    with pytest.raises(ValueError, match="max_line_chars"):
        CaptionLayout(max_line_chars=0)


@settings(max_examples=60, deadline=None)
@given(word_streams(), st.lists(_word_text, min_size=0, max_size=40))
def test_retimed_translations_keep_line_bounds_and_time_span(
    words: list[WordTime], translated_tokens: list[str]
) -> None:
    cues = segment_words(words)
    texts = [" ".join(translated_tokens[: 3 * cue.index]) for cue in cues]
    retimed = retime_text(cues, texts)
    for i, cue in enumerate(retimed):
        assert cue.index == i + 1
        assert 1 <= len(cue.lines) <= 2
        assert all(len(line) <= 42 for line in cue.lines)
        assert cue.start_s <= cue.end_s
        if i + 1 < len(retimed):
            assert cue.end_s <= retimed[i + 1].start_s + 1e-9
    # Every translated character is shown, inside its source cue's span.
    for source, text in zip(cues, texts, strict=True):
        inside = [c for c in retimed if source.start_s <= c.start_s <= source.end_s]
        assert "".join(text.split()) in "".join(c.text.replace(" ", "") for c in inside)
