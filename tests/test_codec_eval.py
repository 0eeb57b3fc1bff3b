"""The codec evaluation harness: its naive baseline, its windowing and a quick end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codec.config import CodecConfig
from simulations.codec_eval import NaiveMelCodec, fit_naive_codec, naive_candidates, run_eval
from simulations.codec_stats import UTTERANCE_GAP_FRAMES, utterance_windows

ROW_KEYS = {"kbps", "wer_clean", "wer_codec", "delta_wer", "mel_l1"}


@pytest.mark.parametrize("target", [2.4, 3.2, 4.0])
def test_naive_candidates_hit_the_target_bitrate_exactly(target: float) -> None:
    candidates = naive_candidates(target)
    assert candidates
    for bits, decimation in candidates:
        # 80 bins x bits x (100 / decimation) frames per second.
        assert 80 * bits * 100 / decimation == pytest.approx(target * 1000)


def test_naive_codec_error_is_bounded_by_half_a_step() -> None:
    rng = np.random.default_rng(1)
    low = np.full(80, -1.0, dtype=np.float32)
    high = np.full(80, 1.0, dtype=np.float32)
    codec = NaiveMelCodec(bits=4, decimation=1, low=low, high=high)
    mel = rng.uniform(-1, 1, size=(80, 57)).astype(np.float32)
    half_step = (2.0 / 15) / 2
    assert np.max(np.abs(codec.round_trip(mel) - mel)) <= half_step + 1e-6
    # Decimation of a signal that is constant in time loses nothing beyond quantization.
    steady = np.repeat(rng.uniform(-1, 1, size=(80, 1)), 43, axis=1).astype(np.float32)
    slow = NaiveMelCodec(bits=4, decimation=6, low=low, high=high)
    out = slow.round_trip(steady)
    assert out.shape == steady.shape
    assert np.max(np.abs(out - steady)) <= half_step + 1e-6
    assert slow.kbps == pytest.approx(80 * 4 * 100 / 6 / 1000)


def test_fit_naive_codec_prefers_the_better_exact_setting() -> None:
    rng = np.random.default_rng(2)
    # Smooth in time: decimating is cheap, bits matter, so the most bits per value should win.
    smooth = [
        np.cumsum(rng.normal(0, 0.01, size=(80, 300)), axis=1).astype(np.float32) for _ in range(3)
    ]
    codec = fit_naive_codec(4.0, smooth)
    assert codec.kbps == pytest.approx(4.0)
    assert codec.bits >= 4


def test_utterance_windows_fill_but_never_overflow() -> None:
    lengths = [300, 250, 900, 2600, 100, 100]
    windows = utterance_windows(lengths, 1200)
    assert windows == [(0, 2), (2, 3), (3, 4), (4, 6)]
    for start, stop in windows:
        used = sum(lengths[start:stop]) + UTTERANCE_GAP_FRAMES * (stop - start - 1)
        assert used <= 1200 or stop - start == 1
    assert utterance_windows([], 1200) == []


@pytest.mark.slow
def test_quick_eval_produces_every_key(tmp_path: Path) -> None:
    for tool in ("flite", "espeak-ng", "sox", "text2wave"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    out = tmp_path / "eval.json"
    lines: list[str] = []
    result = run_eval(
        out_json=out, cache_dir=tmp_path / "corpus", quick=True, progress=lines.append
    )
    assert json.loads(out.read_text()) == result
    assert lines

    rows = [*result["settings"], *result["baselines"]["naive_mel"], *result["baselines"]["opus"]]
    assert result["settings"] and result["baselines"]["naive_mel"] and result["baselines"]["opus"]
    wer_clean = {row["wer_clean"] for row in rows}
    assert len(wer_clean) == 1  # one clean reference for every method
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert row["delta_wer"] == pytest.approx(row["wer_codec"] - row["wer_clean"], abs=2e-4)
        assert row["mel_l1"] > 0 and row["kbps"] > 0
    for setting, naive in zip(result["settings"], result["baselines"]["naive_mel"], strict=True):
        assert setting["kbps"] == pytest.approx(
            CodecConfig(latent_bits=setting["latent_bits"]).kbps
        )
        assert naive["kbps"] <= setting["kbps"] + 1e-9
    for opus in result["baselines"]["opus"]:
        assert opus["kbps"] >= 5.0

    personalization = result["personalization"]
    assert len(personalization["speakers"]) == 3
    for speaker in personalization["speakers"]:
        assert {"id", "local", "global", "personal"} <= set(speaker)
        for model in ("local", "global", "personal"):
            assert set(speaker[model]) == {"mel_l1", "delta_wer"}
    fraction = personalization["personal_best_fraction"]
    assert fraction * 3 == pytest.approx(round(fraction * 3), abs=1e-3)  # rounded to 4 places
    assert 0 < result["bundle_bytes"] <= 50_000

    study = personalization["by_local_seconds"]["5"]
    assert set(study["best_fraction"]) == {"local", "fedavg", "fedavg_ft", "mix70", "apfl", "ditto"}
    assert any(value > 0 for value in study["best_fraction"].values())
    assert 0.0 <= study["default_best_fraction"] <= 1.0
    # The node's own default for 5 s of audio (fl.personalization = "auto"): one source of truth.
    from fl.personalize import default_method

    assert study["default_method"] == default_method(5.0).value
    assert len(study["clients"]) == 2

    unseen = result["unseen"]
    assert len(unseen["speakers"]) == 2 and unseen["utterances"] == 6
    assert {row["coding"] for row in unseen["settings"]} == {"fixed", "entropy"}
    for row in unseen["settings"]:
        low, high = row["delta_wer_ci95"]
        assert low <= row["delta_wer"] <= high
        assert row["delta_wer"] == pytest.approx(row["wer_codec"] - row["wer_clean"], abs=2e-4)
        # DTX sends less than every frame, so the average is below the active-speech rate.
        assert 0 < row["kbps_average"] < row["kbps_active"]
        assert row["bundle_bytes"] <= 50_000 and row["mel_l1"] > 0
    fixed, coded = unseen["settings"]
    assert fixed["kbps_active"] >= fixed["kbps_fixed"]  # whole frames per utterance
    assert coded["kbps_active"] < fixed["kbps_active"]  # the prior pays for itself
