"""``parley bench caption``: a small run has the keys the issue names, and every system heard
the speech (the full 10-minute figures are the bench's job, not CI's)."""

from __future__ import annotations

import pytest

from simulations.bench_caption import run

pytestmark = pytest.mark.slow


def test_a_short_bench_reports_every_system() -> None:
    report = run(minutes=0.2)
    assert report["recordings"] == 1
    systems = report["systems"]
    assert isinstance(systems, dict)
    assert set(systems) == {"parley", "parley_keep_silence", "faster_whisper", "faster_whisper_vad"}
    assert report["set"] == "eval"
    for figures in systems.values():
        assert figures["wall_s"] > 0 and figures["rtf"] > 0
        assert figures["wer"] <= 0.3  # Harvard sentences by piper's joe: tiny.en hears them
    goal = report["goal"]
    assert isinstance(goal, dict) and set(goal) == {
        "at_least_as_accurate",
        "time_ratio",
        "at_most_1_1x_time",
        "rtf_at_most_faster_whisper",
    }
