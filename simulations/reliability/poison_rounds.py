"""Forty rounds with one trusted poisoner, against the same forty rounds without it.

Three nodes (the last one the poisoner, in the poisoned run), each with one synthetic
speaker's enrolled speech (the corpus of ``parley
simulate``): every round each trains ``local_steps`` on its own speech and aggregates the
other's weights with the node's own round logic (:func:`fl.round_guard.guarded_aggregate`,
clipped against the shared starting codec, the round kept only if its held-out split does not
regress). In the poisoned run the last node sends its weights scaled x100 (``parley simulate
--poison``'s attack) instead of its own. The exchange is in memory (no handshake, no
quantization): the node-level run over real handshakes is ``parley bench reliability``'s
``poison_rounds`` stage.

Scores are the node's norm and its log-mel L1 on the speaker's *evaluation* utterances, which
the node never trains on nor checks rounds with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from codec.config import CodecConfig
from codec.model import new_model, state_to_numpy
from fl.aggregate import PeerUpdate
from fl.config import AggregationConfig, TrainConfig
from fl.round_guard import guarded_aggregate, split_heldout
from fl.train import evaluate_l1, train_codec

State = dict[str, npt.NDArray[np.float32]]
Features = list[npt.NDArray[np.float32]]
POISON_SCALE = 100.0
#: The evaluation L1 compared is the mean over the last rounds: one round's training steps
#: move it by a few percent either way, more than the margin the comparison is about.
SCORED_LAST_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class PoisonRun:
    rounds: int
    norms: list[float]
    evaluation_l1: list[float]
    kept: int
    left_out: int


def speakers(count: int = 3) -> list[tuple[Features, Features]]:
    """(enrolled, evaluation) log-mel features of ``count`` corpus speakers (cached speech)."""
    from media.audio import load_audio
    from media.features import log_mel
    from simulations.corpus import DEFAULT_SPEAKERS, build_corpus, default_cache_dir

    corpus = build_corpus(
        default_cache_dir(),
        speakers=DEFAULT_SPEAKERS[:count],
        train_per_speaker=5,
        heldout_per_speaker=2,
    )
    return [
        (
            [log_mel(load_audio(item.wav_path)) for item in speaker.train],
            [log_mel(load_audio(item.wav_path)) for item in speaker.heldout],
        )
        for speaker in corpus.speakers
    ]


def starting_state(config: CodecConfig) -> State:
    """What every node starts from (as :class:`daemon.codec_store.CodecStore` does): the shipped
    pretrained codec when it fits ``config``, else the seeded init."""
    from codec.checkpoint import load_checkpoint
    from codec.pretrained import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.exists():
        shipped = load_checkpoint(DEFAULT_CHECKPOINT)
        if shipped.codec_config == config:
            return dict(shipped.state)
    return state_to_numpy(new_model(config))


def norm(state: Mapping[str, npt.NDArray[np.floating]]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in state.values()))


def run_rounds(
    data: Sequence[tuple[Features, Features]],
    *,
    rounds: int,
    poisoned: bool,
    local_steps: int = 2,
    seed: int = 0,
    codec: CodecConfig | None = None,
    aggregation: AggregationConfig | None = None,
    guard: bool = True,
) -> PoisonRun:
    """``guard=False`` is the node before issue #11: the clip radius relative to our current
    model's norm and every round kept (the loss before/after recorded but unused)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny convolutions: threads only contend (2x slower)
    try:
        return _run_rounds(
            data,
            rounds=rounds,
            poisoned=poisoned,
            local_steps=local_steps,
            seed=seed,
            config=codec or CodecConfig(),
            aggregation=aggregation or AggregationConfig(),
            guard=guard,
        )
    finally:
        torch.set_num_threads(threads)


def _run_rounds(
    data: Sequence[tuple[Features, Features]],
    *,
    rounds: int,
    poisoned: bool,
    local_steps: int,
    seed: int,
    config: CodecConfig,
    aggregation: AggregationConfig,
    guard: bool,
) -> PoisonRun:
    start = starting_state(config)
    reference = norm(start)
    states: list[State] = [dict(start) for _ in data]
    norms: list[float] = []
    scores: list[float] = []
    kept = left_out = 0
    for number in range(1, rounds + 1):
        for index, (enrolled, _evaluation) in enumerate(data):
            model = new_model(config, states[index])
            train_split, _ = split_heldout(enrolled)
            train_codec(
                model,
                train_split,
                TrainConfig(steps=local_steps, seed=seed + 1000 * number + index, threads=1),
            )
            states[index] = state_to_numpy(model)
        sent = [dict(state) for state in states]
        if poisoned:
            sent[-1] = {name: value * np.float32(POISON_SCALE) for name, value in sent[-1].items()}
        new_states: list[State] = []
        for index, (enrolled, _evaluation) in enumerate(data):
            _, heldout = split_heldout(enrolled)

            def loss(
                state: Mapping[str, npt.NDArray[np.floating]], heldout: Features = heldout
            ) -> float:
                return evaluate_l1(new_model(config, state), heldout)

            guarded = guarded_aggregate(
                PeerUpdate(f"n{index}", config.architecture_id, 100, states[index]),
                [
                    PeerUpdate(f"n{other}", config.architecture_id, 100, sent[other])
                    for other in range(len(data))
                    if other != index
                ],
                aggregation,
                round_number=number,
                reference_norm=reference if guard else None,
                heldout_loss=loss if guard else None,
            )
            if index == 0:
                kept += guarded.keep
                left_out += bool(guarded.left_out)
            new_states.append(guarded.result.personal_state if guarded.keep else states[index])
        states = new_states
        norms.append(norm(states[0]))
        if number > rounds - SCORED_LAST_ROUNDS:
            scores.append(evaluate_l1(new_model(config, states[0]), data[0][1]))
    return PoisonRun(rounds, norms, scores, kept, left_out)


def compare(clean: PoisonRun, poisoned: PoisonRun) -> dict[str, float | int]:
    """The issue's figures for node 0 (honest): ``norm_ratio`` of the poisoned run's final model
    to the clean run's, ``l1_ratio`` of their evaluation L1 (mean of the last rounds)."""
    return {
        "rounds": poisoned.rounds,
        "norm_ratio": poisoned.norms[-1] / clean.norms[-1],
        "l1_ratio": float(np.mean(poisoned.evaluation_l1) / np.mean(clean.evaluation_l1)),
        "l1_ratio_final_round": poisoned.evaluation_l1[-1] / clean.evaluation_l1[-1],
        "poisoned_rounds_kept": poisoned.kept,
        "poisoner_left_out": poisoned.left_out,
    }
