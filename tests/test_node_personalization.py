"""The node's personalization (``fl.personalization``, issue 17): the setting, the evidence rule,
and a real node's round running the same function as the study and the Flower app.

Budget: one in-process node per round test (the shipped codec, a few random log-mel items as
enrolled audio, 3 training steps), seconds in all.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from codec.model import new_model, state_to_numpy
from daemon.codec_store import FEATURES_DIGEST_KEY
from daemon.config import InvalidSetting, config_from_mapping, render_default_config
from daemon.enroll import store_features
from daemon.node import NodeOptions, open_node
from fl.aggregate import AggregationResult
from fl.config import TrainConfig
from fl.personalize import (
    AUTO,
    DEFAULT_RULE,
    DITTO_LAMBDA,
    FINE_TUNE_ROUNDS,
    METHODS,
    NODE_SETTINGS,
    Method,
    default_method,
    node_method,
    personalize,
    round_personal,
    training_start,
)
from fl.round_guard import split_heldout
from fl.train import evaluate_l1, train_codec
from media.features import FRAMES_PER_SECOND
from simulations.node_helpers import loopback_config, make_home, short_root
from simulations.node_sim import SimulationSettings, _node_config

TRAIN = TrainConfig(steps=3, batch_size=2, crop_frames=32, seed=5, threads=1)


# -- the setting ------------------------------------------------------------------------------


def test_the_setting_defaults_to_the_evidence_rule_and_shows_in_the_config() -> None:
    assert config_from_mapping({}).fl.personalization == AUTO
    assert 'personalization = "auto"' in render_default_config()
    for value in NODE_SETTINGS:
        assert config_from_mapping({"fl": {"personalization": value}}).fl.personalization == value


@pytest.mark.parametrize("value", [0.7, True, ["mix70"]])
def test_a_personalization_that_is_not_a_string_is_refused_in_one_line(value: object) -> None:
    with pytest.raises(InvalidSetting, match=r"^fl\.personalization: must be a string, got .*$"):
        config_from_mapping({"fl": {"personalization": value}})


@pytest.mark.parametrize("value", ["fedprox", "", "MIX70", "auto "])
def test_a_bad_personalization_names_the_key_and_the_allowed_values(value: str) -> None:
    with pytest.raises(InvalidSetting) as caught:
        config_from_mapping({"fl": {"personalization": value}})
    message = str(caught.value)
    assert message.startswith("fl.personalization: ")
    assert "\n" not in message
    for allowed in ("auto", "mix70", "apfl", "ditto", "fedavg_ft", "local"):
        assert repr(allowed) in message


def test_the_rule_covers_every_amount_of_audio_and_auto_follows_it() -> None:
    assert math.isinf(DEFAULT_RULE[-1][0])
    bounds = [up_to for up_to, _ in DEFAULT_RULE]
    assert bounds == sorted(bounds)
    for seconds in (0.0, 5.0, 15.0, 30.0, 60.0, 300.0, 1e9):
        method = default_method(seconds)
        assert method in METHODS
        assert node_method(AUTO, seconds) is method
        # An explicit method is used whatever the amount of audio.
        assert node_method("mix70", seconds) is Method.MIX70


# -- the shared step --------------------------------------------------------------------------


def _states() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ours = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype("f4")}
    other = {
        name: (value + rng.normal(size=value.shape)).astype(np.float32)
        for name, value in ours.items()
    }
    return ours, other


def test_round_personal_gives_each_method_its_model() -> None:
    ours, global_state = _states()

    def loss(state: dict[str, np.ndarray]) -> float:  # lowest at 0.3 * ours + 0.7 * global
        target = personalize(ours, global_state, 0.3)
        return float(sum(np.abs(state[name] - target[name]).sum() for name in state))

    def train(start: dict[str, np.ndarray], anchor: dict[str, np.ndarray] | None) -> dict:
        shift = 1.0 if anchor is None else 2.0
        return {name: (value + shift).astype(np.float32) for name, value in start.items()}

    common = dict(trained=ours, global_state=global_state, alpha=0.7, loss=loss, train=train)
    made = {method: round_personal(method, **common) for method in METHODS}  # type: ignore[arg-type]
    for name in ours:
        np.testing.assert_array_equal(made[Method.LOCAL].state[name], ours[name])
        np.testing.assert_array_equal(made[Method.FEDAVG].state[name], global_state[name])
        np.testing.assert_array_equal(made[Method.FEDAVG_FT].state[name], global_state[name] + 1)
        np.testing.assert_array_equal(made[Method.DITTO].state[name], ours[name] + 2)
        np.testing.assert_array_equal(
            made[Method.MIX70].state[name], personalize(ours, global_state, 0.7)[name]
        )
        np.testing.assert_array_equal(
            made[Method.APFL].state[name],
            training_start(
                Method.APFL, local_state=ours, global_state=global_state, alpha=0.7, loss=loss
            )[name],
        )
    assert made[Method.APFL].alpha == 0.3 and made[Method.MIX70].alpha == 0.7
    # Without training audio there is nothing to fine-tune on or to learn the weight from.
    bare = dict(common, loss=None, train=None)
    assert round_personal(Method.APFL, **bare).alpha == 0.7  # type: ignore[arg-type]
    for method in (Method.FEDAVG_FT, Method.DITTO):
        kept = round_personal(method, **bare).state  # type: ignore[arg-type]
        np.testing.assert_array_equal(kept["a"], global_state["a"])


# -- a real node's round ----------------------------------------------------------------------


def _features(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [
        (rng.normal(-4.0, 2.0, size=(80, 60 + 7 * index))).astype(np.float32)
        for index in range(count)
    ]


async def _one_round(setting: str) -> tuple[dict, AggregationResult, dict, list[np.ndarray], dict]:
    """A node with enrolled audio and one peer bundle in its inbox runs one round; returns its
    model before the round, the aggregation, its model after, its training audio, the record."""
    from codec.bundle import bundle_from_state
    from handshake.noise import StaticIdentity

    seen: list[AggregationResult] = []
    with short_root() as root:
        home, _ = make_home(root, "n")
        for item in _features(6):
            store_features(home.features_dir, item)
        config = loopback_config(name="n", mdns=False)
        config = config.replace("fl", personalization=setting, max_loss_increase=10.0)
        options = NodeOptions(
            listen_port=0, train=TRAIN, on_aggregated=lambda _n, r: seen.append(r)
        )
        async with open_node(home, config, options) as node:
            ours = node.codecs.current()
            # Our model counts as trained on this audio: the round does not train first.
            node.codecs.save(
                dataclasses.replace(
                    ours.checkpoint,
                    sample_count=500,
                    metadata={
                        **ours.checkpoint.metadata,
                        FEATURES_DIGEST_KEY: node.codecs.features_digest(),
                    },
                )
            )
            before = dict(node.codecs.current().checkpoint.state)
            rng = np.random.default_rng(3)
            peer_state = {
                name: (value + 0.01 * rng.normal(size=value.shape)).astype(np.float32)
                for name, value in before.items()
            }
            bundle = bundle_from_state(
                peer_state, architecture_id=ours.config.architecture_id, round=1, sample_count=500
            )
            assert node.scheduler.receive_bundle(StaticIdentity.generate().public, bundle) is None
            record = await node.scheduler.run_round()
            assert record.status.value == "completed", record
            after = dict(node.codecs.current().checkpoint.state)
            own, _heldout = split_heldout(node.codecs.load_features())
    (result,) = seen
    assert record.record["discarded"] is None, record.record
    return before, result, after, own, dict(record.record)


def _node_train(config_codec, own):  # type: ignore[no-untyped-def]
    def train(start, anchor):  # type: ignore[no-untyped-def]
        model = new_model(config_codec, start)
        steps = TRAIN.steps * (FINE_TUNE_ROUNDS if anchor is None else 1)
        train_codec(
            model,
            own,
            dataclasses.replace(TRAIN, steps=steps),
            anchor=anchor,
            proximal_weight=DITTO_LAMBDA if anchor is not None else 0.0,
        )
        return state_to_numpy(model)

    return train


@pytest.mark.parametrize("method", list(METHODS))
async def test_a_node_round_keeps_what_the_shared_function_makes(method: Method) -> None:
    from codec.config import CodecConfig

    before, result, after, own, record = await _one_round(method.value)
    codec = CodecConfig()
    expected = round_personal(
        method,
        trained=before,
        global_state=result.global_state,
        alpha=0.7,
        loss=lambda state: evaluate_l1(new_model(codec, state), own),
        train=_node_train(codec, own),
    )
    assert set(after) == set(expected.state)
    for name in after:
        np.testing.assert_array_equal(after[name], expected.state[name], err_msg=name)
    if method is not Method.LOCAL:
        assert any(not np.array_equal(after[name], before[name]) for name in after)
    assert record["personalization"] == method.value
    assert record["personal_alpha"] == expected.alpha


async def test_mix70_reproduces_the_seed_nodes_fixed_mix() -> None:
    before, result, after, _own, record = await _one_round("mix70")
    # result.personal_state is the mix the node kept before fl.personalization existed
    # (aggregate_round's, in float64 from the global before its rounding to float32): equal up
    # to that rounding (half an ulp of the global, times 0.3) and the result's own.
    for name in after:
        today = result.personal_state[name]
        bound = 2.0**-23 * (np.abs(result.global_state[name]) + np.abs(today))
        assert (np.abs(after[name].astype(np.float64) - today) <= bound).all(), name
        assert np.mean(after[name] == today) > 0.5, name  # mostly bit for bit
    assert any(not np.array_equal(after[name], before[name]) for name in after)
    assert result.record.alpha == 0.7 and record["personal_alpha"] == 0.7


async def test_auto_runs_the_rule_for_the_nodes_amount_of_audio() -> None:
    _before, _result, _after, own, record = await _one_round(AUTO)
    seconds = sum(item.shape[1] for item in own) / FRAMES_PER_SECOND
    assert record["personalization"] == default_method(seconds).value


# -- parley simulate --------------------------------------------------------------------------


def test_simulated_nodes_run_the_personalization_they_are_given() -> None:
    for value in NODE_SETTINGS:
        settings = SimulationSettings(nodes=2, rounds=1, personalization=value)
        assert _node_config(settings, 0, ()).fl.personalization == value
    assert SimulationSettings(nodes=2, rounds=1).personalization == AUTO
    with pytest.raises(ValueError, match="--personalization must be one of"):
        SimulationSettings(nodes=2, rounds=1, personalization="fedprox")


async def test_parley_simulate_nodes_run_the_given_method_in_their_rounds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import trio

    from simulations.node_sim import run_simulation

    settings = SimulationSettings(
        nodes=2,
        rounds=1,
        personalization="ditto",
        local_steps=2,
        train_per_speaker=2,
        heldout_per_speaker=1,
        measure_wer=False,
        score_every_round=False,
    )
    with trio.fail_after(300):
        report = await run_simulation(settings, out_dir=tmp_path)
    assert report["settings"]["personalization"] == "ditto"
    for node in report["nodes"]:
        (row,) = node["rounds"]
        assert row["status"] == "completed"
        assert row["record"]["personalization"] == "ditto"
        assert row["record"]["personal_alpha"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--personalization", "fedprox"], "--personalization must be one of auto, local"),
        (
            ["--engine", "flower", "--personalization", "auto"],
            "--personalization for --engine flower must be one of local, fedavg",
        ),
    ],
)
def test_parley_simulate_refuses_a_bad_personalization_in_one_line(
    tmp_path, extra: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "simulate", "--out", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
