"""Personalized FedAvg against direct numpy oracles, validation, clipping and robustness."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest

from fl.aggregate import PeerUpdate, aggregate_round
from fl.config import AggregationConfig, RobustStatistic

ARCH = "csm-v1-test"
SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 2, 3)}
NO_CLIP = 1e6


def _state(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        name: (rng.normal(size=shape) * scale).astype(np.float32) for name, shape in SHAPES.items()
    }


def _update(peer: str, n: int, state: dict[str, np.ndarray], arch: str = ARCH) -> PeerUpdate:
    return PeerUpdate(peer_id=peer, architecture_id=arch, sample_count=n, state=state)


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in a)))


def _flat(state: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([state[k].astype(np.float64).ravel() for k in sorted(state)])


def _norm(a: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float((a[k].astype(np.float64) ** 2).sum()) for k in a)))


def test_weighted_mean_and_personalization_match_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    local = _update("me", 30, _state(rng))
    peers = [_update(f"p{i}", n, _state(rng)) for i, n in enumerate([10, 50, 7])]
    config = AggregationConfig(alpha=0.7, clip_norm_ratio=NO_CLIP, robust="trimmed_mean")
    # 4 participants < min_bundles_for_robust=5, so this is the plain weighted mean.
    result = aggregate_round(local, peers, config, round_number=4)
    everyone = [local, *peers]
    total = sum(u.sample_count for u in everyone)
    for name in SHAPES:
        oracle_global = (
            sum(u.sample_count * u.state[name].astype(np.float64) for u in everyone) / total
        )
        oracle_personal = 0.7 * local.state[name] + 0.3 * oracle_global
        np.testing.assert_allclose(result.global_state[name], oracle_global, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            result.personal_state[name], oracle_personal, rtol=1e-5, atol=1e-6
        )
    record = result.record
    assert record.statistic == "weighted_mean"
    assert record.round == 4 and record.alpha == 0.7
    assert [p.peer_id for p in record.participants] == ["p0", "p1", "p2"]
    assert record.total_sample_count == 97
    assert record.rejected == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.alpha = 0.5  # type: ignore[misc]


def test_clipping_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(2)
    local_state = _state(rng)
    near = {k: v + 0.01 for k, v in local_state.items()}
    far = {
        k: v + 10.0 * rng.normal(size=v.shape).astype(np.float32) for k, v in local_state.items()
    }
    config = AggregationConfig(alpha=0.5, clip_norm_ratio=0.3, robust="none")
    result = aggregate_round(
        _update("me", 1, local_state), [_update("near", 1, near), _update("far", 2, far)], config
    )
    bound = 0.3 * np.linalg.norm(_flat(local_state))
    u_far = _flat(far) - _flat(local_state)
    u_far_clipped = u_far * bound / np.linalg.norm(u_far)
    u_near = _flat(near) - _flat(local_state)  # under the bound: unchanged
    oracle_global = _flat(local_state) + (1 * u_near + 2 * u_far_clipped) / 4
    got = _flat(result.global_state)
    np.testing.assert_allclose(got, oracle_global, rtol=1e-5, atol=1e-6)
    far_record = result.record.participants[1]
    assert far_record.clipped and far_record.clipped_norm == pytest.approx(bound)
    assert far_record.update_norm == pytest.approx(np.linalg.norm(u_far))
    assert not result.record.participants[0].clipped


def test_invalid_updates_are_recorded_with_reasons_and_the_rest_aggregated() -> None:
    rng = np.random.default_rng(3)
    local = _update("me", 5, _state(rng))
    good = _update("good", 15, _state(rng))
    nan_state = _state(rng)
    nan_state["a.bias"][1] = np.nan
    inf_state = _state(rng)
    inf_state["b.weight"][0, 0, 0] = np.inf
    wrong_shape = {**_state(rng), "a.weight": np.zeros((3, 4), np.float32)}
    missing = {k: v for k, v in _state(rng).items() if k != "a.bias"}
    bad = [
        (_update("nan", 5, nan_state), "non-finite"),
        (_update("inf", 5, inf_state), "non-finite"),
        (_update("shape", 5, wrong_shape), "shape"),
        (_update("missing", 5, missing), "missing"),
        (_update("arch", 5, _state(rng), arch="csm-v1-other"), "architecture"),
        (_update("zero", 0, _state(rng)), "not positive"),
        (_update("negative", -3, _state(rng)), "not positive"),
        (_update("good", 5, _state(rng)), "duplicate"),
        (_update("me", 5, _state(rng)), "duplicate"),
    ]
    config = AggregationConfig(clip_norm_ratio=NO_CLIP, robust="median", min_bundles_for_robust=5)
    result = aggregate_round(local, [good, *(u for u, _ in bad)], config)
    reasons = {r.peer_id + str(i): r.reason for i, r in enumerate(result.record.rejected)}
    assert len(result.record.rejected) == len(bad)
    for (update, expected), rejection in zip(bad, result.record.rejected, strict=True):
        assert rejection.peer_id == update.peer_id
        assert expected in rejection.reason, reasons
    # Only two valid participants: the weighted mean of ours and the good one.
    assert result.record.statistic == "weighted_mean"
    for name in SHAPES:
        oracle = (5 * local.state[name].astype(np.float64) + 15 * good.state[name]) / 20
        np.testing.assert_allclose(result.global_state[name], oracle, rtol=1e-5, atol=1e-6)


def test_an_invalid_local_model_is_our_error() -> None:
    state = _state(np.random.default_rng(4))
    state["a.bias"][0] = np.nan
    with pytest.raises(ValueError, match="local model"):
        aggregate_round(_update("me", 1, state), [], AggregationConfig())


@pytest.mark.parametrize("robust", ["none", "trimmed_mean", "median"])
@pytest.mark.parametrize("honest_peers", [0, 2, 6])
def test_a_poisoned_bundle_moves_us_at_most_the_clip_bound(
    robust: RobustStatistic, honest_peers: int
) -> None:
    rng = np.random.default_rng(5)
    local_state = _state(rng)
    peers = [
        _update(
            f"h{i}",
            10,
            {
                k: v + 0.05 * rng.normal(size=v.shape).astype(np.float32)
                for k, v in local_state.items()
            },
        )
        for i in range(honest_peers)
    ]
    poison = {k: np.full(v.shape, 1e6, np.float32) for k, v in local_state.items()}
    peers.append(_update("evil", 10**8, poison))  # huge norm *and* a lying (but capped) count
    config = AggregationConfig(alpha=0.7, clip_norm_ratio=0.5, robust=robust)
    result = aggregate_round(_update("me", 10, local_state), peers, config)
    # ||personal - local|| = (1 - alpha) ||global - local|| <= (1 - alpha) * ratio * ||local||
    bound = (1 - 0.7) * 0.5 * _norm(local_state)
    assert _distance(result.personal_state, local_state) <= bound * (1 + 1e-5)
    assert result.record.personal_update_norm <= bound * (1 + 1e-5)
    assert result.record.participants[-1].clipped


def test_robust_statistics_with_five_or_more_bundles_match_oracles() -> None:
    rng = np.random.default_rng(6)
    local = _update("me", 3, _state(rng))
    peers = [_update(f"p{i}", 1 + i, _state(rng)) for i in range(5)]  # 6 participants
    everyone = [local, *peers]
    robust: RobustStatistic
    for robust in ("trimmed_mean", "median"):
        config = AggregationConfig(clip_norm_ratio=NO_CLIP, robust=robust, trim_fraction=0.2)
        result = aggregate_round(local, peers, config)
        assert result.record.statistic == robust
        for name, shape in SHAPES.items():
            oracle = np.empty(shape)
            for index in np.ndindex(shape):
                values = sorted(float(u.state[name][index]) for u in everyone)
                if robust == "median":
                    oracle[index] = statistics.median(values)
                else:  # floor(0.2 * 6) = 1 value dropped at each end
                    oracle[index] = statistics.fmean(values[1:-1])
            np.testing.assert_allclose(result.global_state[name], oracle, rtol=1e-5, atol=1e-6)


def test_robust_statistic_resists_an_outlier_the_mean_follows() -> None:
    rng = np.random.default_rng(7)
    base = _state(rng)
    honest = [_update(f"h{i}", 10, {k: v + 0.01 * i for k, v in base.items()}) for i in range(4)]
    outlier = _update("odd", 10, {k: v + 1.0 for k, v in base.items()})
    robust = aggregate_round(
        _update("me", 10, base),
        [*honest, outlier],
        AggregationConfig(clip_norm_ratio=NO_CLIP, alpha=0.0),
    )
    plain = aggregate_round(
        _update("me", 10, base),
        [*honest, outlier],
        AggregationConfig(clip_norm_ratio=NO_CLIP, alpha=0.0, robust="none"),
    )
    assert _distance(robust.global_state, base) < 0.1 * _distance(plain.global_state, base)


def test_a_coordinate_wise_median_outside_the_ball_is_projected_back() -> None:
    """Each update is within the clip bound, but their coordinate-wise median is not."""
    local_state = {"w": np.array([0.0, 0.0, 0.0, 10.0], np.float32)}
    bound = 0.5 * 10.0
    directions = [(1, 1, 0), (1, 0, 1), (0, 1, 1)] * 2
    peers = [
        PeerUpdate(
            peer_id=f"p{i}",
            architecture_id=ARCH,
            sample_count=1,
            state={
                "w": (local_state["w"] + np.array([*d, 0.0]) * bound / np.sqrt(2)).astype(
                    np.float32
                )
            },
        )
        for i, d in enumerate(directions)
    ]
    config = AggregationConfig(alpha=0.7, clip_norm_ratio=0.5, robust="median")
    result = aggregate_round(PeerUpdate("me", ARCH, 1, local_state), peers, config)
    # median of each of the first 3 coordinates is bound/sqrt(2): norm bound*sqrt(3/2) > bound
    assert result.record.global_update_norm == pytest.approx(bound * np.sqrt(1.5), rel=1e-5)
    assert result.record.global_update_clipped
    assert _distance(result.global_state, local_state) == pytest.approx(bound, rel=1e-5)
    assert _distance(result.personal_state, local_state) <= 0.3 * bound * (1 + 1e-5)
