"""Issue #11 item 7: poisoning does not compound over rounds.

One trusted poisoner for 40 rounds leaves our model's norm within 1.5x and its held-out mel L1
within 5% of the clean run with the same seed (two nodes, real training of the real codec, the
node's own round logic; see :mod:`simulations.reliability.poison_rounds` for what is in memory).
"""

from __future__ import annotations

import numpy as np
import pytest

from codec.config import MAX_SAMPLE_COUNT, CodecConfig
from fl.aggregate import PeerUpdate, aggregate_round
from fl.config import AggregationConfig
from fl.round_guard import guarded_aggregate, loss_regressed, split_heldout
from simulations.reliability.poison_rounds import compare, run_rounds, speakers

pytestmark = pytest.mark.slow


def _state(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 4), value, np.float32)}


def test_an_absurd_sample_count_is_refused():
    local = PeerUpdate("me", "a", 10, _state(1.0))
    liar = PeerUpdate("liar", "a", 2**64 - 1, _state(5.0))
    fair = PeerUpdate("fair", "a", MAX_SAMPLE_COUNT, _state(1.1))
    result = aggregate_round(local, [liar, fair], AggregationConfig())
    assert [r.peer_id for r in result.record.rejected] == ["liar"]
    assert "sample count" in result.record.rejected[0].reason
    assert [p.peer_id for p in result.record.participants] == ["fair"]


def test_the_clip_radius_is_fixed_by_the_reference_not_the_model():
    config = AggregationConfig(alpha=0.0, clip_norm_ratio=0.5, robust="none")
    local = PeerUpdate("me", "a", 1, _state(10.0))  # a model that already grew 10x
    poison = PeerUpdate("p", "a", 1, _state(1000.0))
    result = aggregate_round(local, [poison], config, reference_norm=4.0)  # ||start|| = 4
    assert result.record.clip_bound == pytest.approx(2.0)
    assert result.record.participants[0].clipped_norm == pytest.approx(2.0)


def test_split_heldout_and_regression():
    assert split_heldout([1]) == ([1], [1])
    assert split_heldout([1, 2]) == ([1], [2])
    train, held = split_heldout(list(range(10)))
    assert held == [4, 9] and set(train) | set(held) == set(range(10))
    assert loss_regressed(1.0, 1.03, 0.02) and not loss_regressed(1.0, 1.01, 0.02)
    assert loss_regressed(1.0, float("nan"), 0.02)


def test_a_regressing_round_is_discarded_after_a_retry_without_clipped_peers():
    local = PeerUpdate("me", "a", 1, _state(1.0))
    honest = PeerUpdate("h", "a", 1, _state(1.01))
    poison = PeerUpdate("p", "a", 1, _state(100.0))
    config = AggregationConfig(robust="none")

    def loss(state):  # distance from the all-ones model: anything far away is worse
        return float(np.abs(np.asarray(state["w"]) - 1.0).mean()) + 0.1

    guarded = guarded_aggregate(
        local, [honest, poison], config, round_number=1, reference_norm=4.0, heldout_loss=loss
    )
    assert guarded.keep and guarded.left_out == ("p",)
    assert [p.peer_id for p in guarded.result.record.participants] == ["h"]
    alone = guarded_aggregate(
        local, [poison], config, round_number=1, reference_norm=400.0, heldout_loss=loss
    )
    assert not alone.keep and alone.reason and "held-out loss" in alone.reason


#: CI-sized: a small codec of the same architecture family, from its seeded init.
SMALL_CODEC = CodecConfig(hidden=16, latent_dim=8, blocks=1)


def test_one_trusted_poisoner_for_40_rounds_leaves_our_model_close_to_the_clean_run():
    data = speakers(3)
    common = dict(rounds=40, local_steps=1, seed=3, codec=SMALL_CODEC)
    clean = run_rounds(data, poisoned=False, **common)
    poisoned = run_rounds(data, poisoned=True, **common)
    figures = compare(clean, poisoned)
    assert 1 / 1.5 <= figures["norm_ratio"] <= 1.5, figures
    assert figures["l1_ratio"] <= 1.05, figures
