"""``parley bench asr-stream``: the evaluation set's shape, its separation from tuning material,
and the scoring (no models: the bench itself is too heavy for a test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from media.features import SAMPLE_RATE
from simulations.bench_asr_stream import (
    EVAL_SET,
    TUNING_SET,
    EvalSetError,
    Recording,
    StreamRun,
    load_speech_set,
    score_stream,
    set_wer,
    spoken_numbers,
)
from simulations.harvard import HELDOUT_SENTENCES, TRAIN_SENTENCES


def test_evaluation_set_has_the_breadth_the_issue_asks_for() -> None:
    speech_set = load_speech_set(EVAL_SET)
    assert len(speech_set.voices) >= 6
    assert len({voice.engine for voice in speech_set.voices}) >= 3
    assert len(set(speech_set.sentences)) >= 40
    assert min(speech_set.pauses_s) <= 0.2 + 1e-9 and max(speech_set.pauses_s) >= 2.0 - 1e-9
    assert all(0.2 - 1e-9 <= pause <= 2.0 + 1e-9 for pause in speech_set.pauses_s)
    # Every sentence is read by some voice.
    read = {text for index in range(len(speech_set.voices)) for text in speech_set.script(index)}
    assert read == set(speech_set.sentences)
    # Slow and fast readers: espeak rates and piper length scales on both sides of normal.
    rates = [v.words_per_minute for v in speech_set.voices if v.words_per_minute is not None]
    scales = [v.length_scale for v in speech_set.voices if v.length_scale is not None]
    assert min(rates) <= 130 and max(rates) >= 200
    assert min(scales) < 1.0 < max(scales)


def test_evaluation_material_is_apart_from_tuning_and_training_material() -> None:
    evaluation = load_speech_set(EVAL_SET)
    tuning = load_speech_set(TUNING_SET)
    assert not set(evaluation.sentences) & set(tuning.sentences)
    assert not {v.id for v in evaluation.voices} & {v.id for v in tuning.voices}
    harvard = set(TRAIN_SENTENCES) | set(HELDOUT_SENTENCES)
    assert not set(evaluation.sentences) & harvard
    # No test file quotes an evaluation sentence (tests must not tune on it).
    tests_dir = Path(__file__).parent
    for path in tests_dir.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for sentence in evaluation.sentences:
            assert sentence not in text, (path, sentence)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "not JSON"),
        (b'{"name": "x"}', "does not describe"),
        (
            json.dumps(
                {
                    "name": "x",
                    "sentences": ["a"],
                    "voices": [{"id": "v", "engine": "klatt", "voice": "x"}],
                    "sentences_per_voice": 1,
                    "pauses_s": [1.0],
                }
            ).encode(),
            "does not describe",
        ),
        (
            json.dumps(
                {
                    "name": "x",
                    "sentences": ["a"],
                    "voices": [{"id": "v", "engine": "flite", "voice": "slt"}],
                    "sentences_per_voice": 1,
                    "pauses_s": [-1.0],
                }
            ).encode(),
            "pauses",
        ),
    ],
)
def test_bad_set_files_are_one_line_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "set.json"
    path.write_bytes(content)
    with pytest.raises(EvalSetError) as caught:
        load_speech_set(path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(EvalSetError):
        load_speech_set(tmp_path / "missing.json")


def test_numbers_are_compared_as_spoken() -> None:
    assert spoken_numbers("at 5.30 at gate 14, 300 people") == (
        "at five thirty at gate fourteen, three hundred people"
    )
    assert set_wer([("It costs eight euros.", "It costs 8 euros.")]) == 0.0
    assert set_wer([("two thousand nineteen", "2019")]) == 0.0


def test_a_sentence_without_overlapping_caption_words_is_dropped() -> None:
    recording = Recording(
        voice_id="v",
        audio=np.zeros(8 * SAMPLE_RATE, dtype=np.float32),
        texts=("one two", "three four", "five six"),
        spans_s=((0.5, 1.5), (2.5, 3.5), (5.0, 6.0)),
    )
    run = StreamRun(
        words=[(" one", 0.6, 0.9, 2.0), (" two", 1.0, 1.4, 2.2), (" six", 5.5, 5.9, 6.9)],
        cpu_clock_commits=[1.9, 2.1, 6.5],
    )
    scored = score_stream(recording, run)
    assert scored["dropped"] == 1
    assert [s["streaming"] for s in scored["sentences"]] == ["one two", "", "six"]
    assert scored["latencies"] == pytest.approx([0.7, 0.9])
    assert scored["cpu_latencies"] == pytest.approx([0.6, 0.5])
