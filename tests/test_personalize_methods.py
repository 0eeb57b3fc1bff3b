"""The personalization methods the node, the study and the Flower app share (fl.personalize)."""

from __future__ import annotations

import numpy as np
import pytest

from codec.config import CodecConfig
from codec.model import new_model, state_to_numpy
from fl.config import TrainConfig
from fl.personalize import (
    ALPHA_GRID,
    Method,
    learned_alpha,
    personalize,
    training_start,
)
from fl.train import train_codec
from simulations.personalization_study import first_seconds, wilson


def _states() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    local = {"w": rng.normal(size=(3, 4)).astype(np.float32)}
    global_ = {"w": rng.normal(size=(3, 4)).astype(np.float32)}
    return local, global_


def test_learned_alpha_is_the_grid_point_with_the_lowest_loss() -> None:
    local, global_ = _states()
    target = personalize(local, global_, 0.3)

    def loss(state: dict[str, np.ndarray]) -> float:
        return float(np.abs(state["w"] - target["w"]).sum())

    # Oracle: evaluate every grid point directly.
    expected = min(ALPHA_GRID, key=lambda a: loss(personalize(local, global_, a)))
    assert learned_alpha(local, global_, loss) == expected == 0.3
    assert learned_alpha(local, global_, lambda state: 1.0) == 1.0  # ties keep the local model


def test_training_start_by_method() -> None:
    local, global_ = _states()

    def loss(state: dict[str, np.ndarray]) -> float:
        return float(np.abs(state["w"] - global_["w"]).sum())

    for method in (Method.FEDAVG, Method.FEDAVG_FT, Method.DITTO, Method.LOCAL):
        start = training_start(
            method, local_state=local, global_state=global_, alpha=0.7, loss=loss
        )
        assert np.array_equal(start["w"], global_["w"])
    mixed = training_start(
        Method.MIX70, local_state=local, global_state=global_, alpha=0.7, loss=loss
    )
    np.testing.assert_allclose(mixed["w"], 0.7 * local["w"] + 0.3 * global_["w"], rtol=1e-6)
    learned = training_start(
        Method.APFL, local_state=local, global_state=global_, alpha=0.7, loss=loss
    )
    assert np.array_equal(learned["w"], global_["w"])  # alpha 0 fits a loss around the global
    first = training_start(
        Method.MIX70, local_state=None, global_state=global_, alpha=0.7, loss=loss
    )
    assert np.array_equal(first["w"], global_["w"])


def test_the_proximal_term_keeps_a_ditto_model_near_its_anchor() -> None:
    config = CodecConfig(hidden=8, latent_dim=8, blocks=1)
    anchor = state_to_numpy(new_model(config))
    features = [np.random.default_rng(1).normal(size=(80, 64)).astype(np.float32)]
    settings = TrainConfig(steps=15, batch_size=2, crop_frames=32, seed=1, learning_rate=0.01)

    def distance(proximal_weight: float) -> float:
        model = new_model(config, anchor)
        train_codec(model, features, settings, anchor=anchor, proximal_weight=proximal_weight)
        state = state_to_numpy(model)
        return float(sum(np.sum((state[k] - anchor[k]) ** 2) for k in anchor))

    assert distance(1000.0) < 0.5 * distance(0.0)
    with pytest.raises(ValueError, match="proximal_weight"):
        train_codec(new_model(config), features, settings, anchor=anchor, proximal_weight=-1.0)


def test_first_seconds_and_wilson() -> None:
    features = [np.zeros((80, 300), dtype=np.float32), np.ones((80, 400), dtype=np.float32)]
    taken = first_seconds(features, 5.0)
    assert [item.shape[1] for item in taken] == [300, 200]
    with pytest.raises(ValueError):
        first_seconds(features, 8.0)
    low, high = wilson(7, 7)
    assert high == 1.0 and 0.6 < low < 0.7  # 7 of 7: the interval still reaches down to ~0.65
    assert wilson(0, 7)[0] == 0.0


def test_the_study_runs_the_nodes_default_as_nodes_run_it() -> None:
    """The study's node federation (``node_round``, what daemon/scheduler.py does per round):
    with ``local`` it must be the study's own local-only training, bit for bit (same steps,
    seeds and data: an independent path to the same models); with ``apfl`` it is apfl's."""
    from codec.checkpoint import load_checkpoint
    from codec.pretrained import DEFAULT_CHECKPOINT
    from simulations.personalization_study import Client, StudyPlan, run_federation, score

    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    start = {name: np.asarray(value, dtype=np.float32) for name, value in shipped.state.items()}
    rng = np.random.default_rng(4)

    def mel(frames: int) -> np.ndarray:
        return rng.normal(-4.0, 2.0, size=(shipped.codec_config.n_mels, frames)).astype("f4")

    clients = [
        Client(id=f"c{index}", train=(mel(150), mel(140)), heldout=(mel(60),)) for index in range(2)
    ]
    plan = StudyPlan(rounds=1, local_steps=2, batch_size=2)
    models, as_nodes = run_federation(
        clients, start, shipped.codec_config, plan, node_default=Method.LOCAL
    )
    for node_state, local_state in zip(as_nodes, models[Method.LOCAL], strict=True):
        for name in local_state:
            np.testing.assert_array_equal(node_state[name], local_state[name])
    models, as_nodes = run_federation(
        clients, start, shipped.codec_config, plan, node_default=Method.APFL
    )
    assert as_nodes is models[Method.APFL]
    scored = score(
        clients, models, shipped.codec_config, 0, default=Method.APFL, node_models=as_nodes
    )
    assert scored["default_best_fraction"] == scored["vs_local_and_fedavg_ft"]["apfl"]
