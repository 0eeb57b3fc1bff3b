"""``parley bench call`` on a short script: the JSON it promises, figures measured in the run."""

from __future__ import annotations

import json

import pytest

from simulations.bench_call import run

pytestmark = pytest.mark.slow

KEYS = {
    "caption_latency_p50_s",
    "caption_latency_p95_s",
    "translated_latency_p50_s",
    "asr_rtf",
    "asr_rtf_reference",
    "rss_mb",
    "note",
}


def test_bench_call_reports_every_figure(tmp_path):
    path = tmp_path / "call.json"
    result = run(
        path,
        progress=lambda text: None,
        sentences=("Stop whistling and watch the boys march.",),
    )
    assert json.loads(path.read_text()) == result
    figures = result["call"]
    assert set(figures) >= KEYS
    for key in KEYS - {"note"}:
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["caption_latency_p50_s"] <= figures["caption_latency_p95_s"]
    # The audio was really played: the listener heard about as much as the script lasts.
    assert figures["audio_s"] == pytest.approx(0.5 + 1.0 + 2.2, abs=1.5)
    assert "real time" in figures["note"]
    assert 0.0 <= figures["caption_wer"] <= 1.0
    assert figures["counts"]["source_cues"] >= 1
    with pytest.raises(ValueError, match="held-out"):
        run(None, sentences=("not a Harvard sentence",))


def test_bench_call_runs_several_calls_from_one_caller(tmp_path):
    # All the calls come from one caller node: the listener must let that peer hold them all.
    result = run(
        tmp_path / "calls.json",
        progress=lambda text: None,
        sentences=("Stop whistling and watch the boys march.",),
        calls=2,
    )
    figures = result["calls"]
    assert figures["completed"] == 2 and len(figures["per_call"]) == 2 and not figures["failed"]
    assert isinstance(figures["worst_caption_p95_s"], float)
    assert 0.0 <= figures["caption_wer_max"] <= 1.0
    assert figures["cpu_s"] > 0 and figures["cores_needed"] > 0
