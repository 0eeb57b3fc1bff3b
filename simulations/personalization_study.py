"""Which personalization pays, and for whom: a study across the amount of audio per client.

Theory of operation
-------------------
Clients are the unseen speakers of :mod:`simulations.codec_unseen` (voices the shipped starting
codec never heard, the case personalization is for). Each client's *local audio* is the first
``S`` seconds of its readings of Harvard lists 1-8 (utterances in order, the last one cut to
make exactly ``S`` s); its *held-out* audio is lists 9-10. Every client of a federation has the
same ``S``. Every method starts from the shipped starting codec and runs ``rounds`` rounds of
``local_steps`` steps per client (:mod:`fl.personalize` names and defines the methods; the global
model is :func:`fl.aggregate.aggregate_round`'s, as a node computes it, with the node's default
aggregation settings, from the first client's view):

* ``fedavg`` clients train the global model each round; the federation averages them.
* ``fedavg_ft`` is that global model fine-tuned for one round of local steps.
* ``mix70`` and ``apfl`` are federations of their own, as the node runs them: a client trains
  its personal model, the federation averages the trained models, and the client mixes
  ``alpha * trained + (1 - alpha) * global`` (``alpha`` 0.7, or learned per client per round).
* ``ditto`` trains a personal model with the proximal term towards the ``fedavg`` global model.
* ``local`` trains alone for the same number of steps.

Quality is held-out log-mel L1 through the real quantizer (per utterance, so every comparison is
paired). A method is *best or tied-best* for a client when its mean L1 is the lowest, or when the
95 % paired bootstrap interval (over held-out utterances) of its L1 minus the lowest includes 0.
``best_fraction[method]`` is the share of clients where it is best or tied, with a Wilson 95 %
interval over clients; ``vs_local_and_fedavg_ft[method]`` the share where it is best or tied
against ``local`` and ``fedavg_ft`` only.

The node's default (``fl.personalization = "auto"``: :data:`fl.personalize.DEFAULT_RULE`, a
method by the amount of audio) is also run the way nodes run it (:func:`node_round`: every client
trains its model, the trained models are averaged, each keeps
:func:`fl.personalize.round_personal`'s model, the function daemon/scheduler.py calls); for
``mix70`` and ``apfl`` that is the method's own column, for ``ditto`` and ``fedavg_ft`` it differs
from the study's (a node exchanges one model, its personal one, where the study's Ditto and
FedAvg clients federate a separate global model). ``default_best_fraction`` is the share of
clients where that node federation is best or tied against ``local`` and ``fedavg_ft``.

Clients (``--clients``): ``eval``, the unseen voices the figures are reported on, or ``tuning``,
seven other voices (:data:`TUNING_SPEAKERS`) that the default rule was chosen on; nothing is
chosen on ``eval``.

Reproduce (the full study; see ``--help`` for a smaller one)::

    python -m simulations.personalization_study --json build/personalization.json

The default rule's tuning runs and the reported ones (issue 17's note)::

    python -m simulations.personalization_study --clients tuning --seed 0 --json F
    python -m simulations.personalization_study --clients eval --seed 2 --seconds 5 10 15 30 60 \
        --json F
"""

from __future__ import annotations

import common.offline  # noqa: F401

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from codec.checkpoint import load_checkpoint
from codec.config import CodecConfig
from codec.model import new_model, state_to_numpy
from codec.pretrained import DEFAULT_CHECKPOINT
from fl.aggregate import PeerUpdate, aggregate_round
from fl.config import AggregationConfig, TrainConfig
from fl.personalize import (
    DEFAULT_RULE,
    DITTO_LAMBDA,
    FINE_TUNE_ROUNDS,
    METHODS,
    SEED_ALPHA,
    Method,
    default_method,
    round_personal,
)
from fl.train import encode_decode, train_codec
from media.audio import load_audio
from media.features import FRAMES_PER_SECOND, log_mel
from simulations.codec_unseen import UNSEEN_SPEAKERS
from simulations.corpus import VoiceEngine, VoiceSpec, build_corpus, default_cache_dir

State = dict[str, npt.NDArray[np.float32]]
FloatArray = npt.NDArray[np.float32]
Progress = Callable[[str], None]

RESAMPLES: Final = 2000
#: The shortest training utterance of any unseen voice is longer than this (Harvard sentences
#: take 1.8 s or more), so ``seconds / this`` utterances always cover ``seconds``.
MIN_UTTERANCE_S: Final = 1.5

#: Clients the node's default is *chosen* on, apart from the clients it is *reported* on
#: (:data:`~simulations.codec_unseen.UNSEEN_SPEAKERS`, ``--clients eval``): seven more espeak-ng
#: voices that neither the shipped codec (trained on
#: :data:`~simulations.corpus.DEFAULT_SPEAKERS`) nor the evaluation clients use (other accent +
#: variant pairs, pitches and rates; one Klatt voice). They read the same Harvard lists as the
#: evaluation clients (lists 1-8 local, 9-10 held out): the voices differ, the text does not.
TUNING_SPEAKERS: Final[tuple[VoiceSpec, ...]] = (
    VoiceSpec(
        id="espeak-lanc-m4",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb-x-gbclan+m4",
        pitch=35,
        words_per_minute=155,
    ),
    VoiceSpec(
        id="espeak-us-f1",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+f1",
        pitch=70,
        words_per_minute=150,
    ),
    VoiceSpec(
        id="espeak-gb-m6",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb+m6",
        pitch=30,
        words_per_minute=165,
    ),
    VoiceSpec(
        id="espeak-scot-f1",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb-scotland+f1",
        pitch=60,
        words_per_minute=145,
    ),
    VoiceSpec(
        id="espeak-klatt3-us",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+klatt3",
        pitch=45,
        words_per_minute=160,
    ),
    VoiceSpec(
        id="espeak-029-f4",
        engine=VoiceEngine.ESPEAK,
        voice="en-029+f4",
        pitch=55,
        words_per_minute=150,
    ),
    VoiceSpec(
        id="espeak-nyc-m5",
        engine=VoiceEngine.ESPEAK,
        voice="en-us-nyc+m5",
        pitch=40,
        words_per_minute=170,
    ),
)
CLIENT_SETS: Final[dict[str, tuple[VoiceSpec, ...]]] = {
    "tuning": TUNING_SPEAKERS,
    "eval": UNSEEN_SPEAKERS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyPlan:
    seconds: tuple[float, ...] = (5.0, 15.0, 30.0, 60.0)
    speakers: tuple[VoiceSpec, ...] = UNSEEN_SPEAKERS
    rounds: int = 2
    local_steps: int = 25
    batch_size: int = 8
    heldout_per_speaker: int = 20
    threads: int = 1
    seed: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Client:
    id: str
    train: tuple[FloatArray, ...]
    heldout: tuple[FloatArray, ...]

    @property
    def frames(self) -> int:
        return sum(int(mel.shape[1]) for mel in self.train)


def first_seconds(features: Sequence[FloatArray], seconds: float) -> tuple[FloatArray, ...]:
    """The first ``seconds`` of ``features`` in order, the last utterance cut to fit."""
    wanted = round(seconds * FRAMES_PER_SECOND)
    taken: list[FloatArray] = []
    for mel in features:
        if wanted <= 0:
            break
        taken.append(mel[:, :wanted])
        wanted -= int(taken[-1].shape[1])
    if wanted > 0:
        raise ValueError(f"only {sum(m.shape[1] for m in features) / 100:.1f} s available")
    return tuple(taken)


def wilson(successes: int, total: int) -> list[float]:
    """Wilson 95 % interval of a proportion."""
    if total == 0:
        return [0.0, 1.0]
    z = 1.959964
    phat = successes / total
    centre = (phat + z * z / (2 * total)) / (1 + z * z / total)
    half = (
        z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    )
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


class Trainer:
    def __init__(self, config: CodecConfig, plan: StudyPlan) -> None:
        self.config = config
        self.plan = plan

    def train(
        self,
        start: State,
        client: Client,
        seed: int,
        *,
        steps: int | None = None,
        anchor: State | None = None,
    ) -> State:
        model = new_model(self.config, start)
        train_codec(
            model,
            client.train,
            TrainConfig(
                steps=steps or self.plan.local_steps,
                batch_size=self.plan.batch_size,
                threads=self.plan.threads,
                seed=seed,
            ),
            anchor=anchor,
            proximal_weight=DITTO_LAMBDA if anchor is not None else 0.0,
        )
        return state_to_numpy(model)


def _global(config: CodecConfig, clients: Sequence[Client], trained: Sequence[State]) -> State:
    updates = [
        PeerUpdate(
            peer_id=client.id,
            architecture_id=config.architecture_id,
            sample_count=client.frames,
            state=state,
        )
        for client, state in zip(clients, trained, strict=True)
    ]
    result = aggregate_round(updates[0], updates[1:], AggregationConfig())
    return result.global_state


def utterance_l1(config: CodecConfig, state: State, features: Sequence[FloatArray]) -> FloatArray:
    model = new_model(config, state)
    return np.array(
        [float(np.abs(encode_decode(model, mel) - mel).mean()) for mel in features],
        dtype=np.float64,
    ).astype(np.float32)


def run_federation(
    clients: Sequence[Client],
    start: State,
    config: CodecConfig,
    plan: StudyPlan,
    *,
    node_default: Method,
) -> tuple[dict[Method, list[State]], list[State]]:
    """Final model of every method for every client (module docstring), and of the node's
    default as nodes run it (:func:`node_round`)."""
    trainer = Trainer(config, plan)
    count = len(clients)
    global_fedavg = start
    # Federations run the way the node runs a round (mix70 and apfl here are the node's own).
    as_nodes = {method: [start] * count for method in (Method.MIX70, Method.APFL, node_default)}
    ditto = [start] * count
    local = [start] * count
    for round_number in range(plan.rounds):
        seeds = [plan.seed + 1000 * round_number + index for index in range(count)]
        trained = [trainer.train(global_fedavg, c, s) for c, s in zip(clients, seeds, strict=True)]
        global_fedavg = _global(config, clients, trained)
        for method, personal in as_nodes.items():
            personal[:] = node_round(method, personal, clients, seeds, trainer)
        ditto = [
            trainer.train(v, c, s, anchor=global_fedavg)
            for v, c, s in zip(ditto, clients, seeds, strict=True)
        ]
        local = [trainer.train(v, c, s) for v, c, s in zip(local, clients, seeds, strict=True)]
    fine_tuned = [
        trainer.train(global_fedavg, c, plan.seed + 99, steps=plan.local_steps * FINE_TUNE_ROUNDS)
        for c in clients
    ]
    models = {
        Method.LOCAL: local,
        Method.FEDAVG: [global_fedavg] * count,
        Method.FEDAVG_FT: fine_tuned,
        Method.MIX70: as_nodes[Method.MIX70],
        Method.APFL: as_nodes[Method.APFL],
        Method.DITTO: ditto,
    }
    return models, as_nodes[node_default]


def node_round(
    method: Method,
    personal: Sequence[State],
    clients: Sequence[Client],
    seeds: Sequence[int],
    trainer: Trainer,
) -> list[State]:
    """One round of a federation of nodes that all run ``method``, as daemon/scheduler.py does:
    each trains its model on its own audio, the trained models are averaged
    (:func:`fl.aggregate.aggregate_round`), and each keeps
    :func:`fl.personalize.round_personal`'s model (the function the node calls)."""
    config = trainer.config
    own = [trainer.train(p, c, s) for p, c, s in zip(personal, clients, seeds, strict=True)]
    federated = _global(config, clients, own)
    kept: list[State] = []
    for index, client in enumerate(clients):

        def loss(state: Mapping[str, FloatArray], client: Client = client) -> float:
            return float(utterance_l1(config, dict(state), client.train).mean())

        def train(
            start: Mapping[str, npt.NDArray[np.floating]],
            anchor: Mapping[str, npt.NDArray[np.floating]] | None,
            client: Client = client,
            seed: int = seeds[index] + 500,
        ) -> State:
            steps = trainer.plan.local_steps * (FINE_TUNE_ROUNDS if anchor is None else 1)
            return trainer.train(
                _float32(start),
                client,
                seed,
                steps=steps,
                anchor=None if anchor is None else _float32(anchor),
            )

        kept.append(
            round_personal(
                method,
                trained=own[index],
                global_state=federated,
                alpha=SEED_ALPHA,
                loss=loss,
                train=train,
            ).state
        )
    return kept


def _float32(state: Mapping[str, npt.NDArray[np.floating]]) -> State:
    return {name: np.asarray(value, dtype=np.float32) for name, value in state.items()}


def _tied(losses: FloatArray, best: FloatArray, rng: np.random.Generator) -> bool:
    difference = losses.astype(np.float64) - best.astype(np.float64)
    picks = rng.integers(0, len(difference), size=(RESAMPLES, len(difference)))
    low = float(np.percentile(difference[picks].mean(axis=1), 2.5))
    return low <= 0.0


def score(
    clients: Sequence[Client],
    models: dict[Method, list[State]],
    config: CodecConfig,
    seed: int,
    *,
    default: Method,
    node_models: Sequence[State],
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    node_rng = np.random.default_rng(seed + 1)  # the methods' ties stay as without it
    best_counts = dict.fromkeys(METHODS, 0)
    beats_rivals = dict.fromkeys(METHODS, 0)
    node_beats_rivals = 0
    per_client: list[dict[str, Any]] = []
    for index, client in enumerate(clients):
        losses = {m: utterance_l1(config, models[m][index], client.heldout) for m in METHODS}
        means = {m: float(values.mean()) for m, values in losses.items()}
        winner = min(means, key=lambda m: means[m])
        best = [m for m in METHODS if m == winner or _tied(losses[m], losses[winner], rng)]
        for method in best:
            best_counts[method] += 1
        rivals = (Method.LOCAL, Method.FEDAVG_FT)
        rival_best = min(rivals, key=lambda m: means[m])
        for method in METHODS:
            if means[method] <= means[rival_best] or _tied(losses[method], losses[rival_best], rng):
                beats_rivals[method] += 1
        if node_models[index] is models[default][index]:  # mix70, apfl: the method's own run
            node, node_mean = losses[default], means[default]
        else:
            node = utterance_l1(config, node_models[index], client.heldout)
            node_mean = float(node.mean())
            if node_mean <= means[rival_best] or _tied(node, losses[rival_best], node_rng):
                node_beats_rivals += 1
        per_client.append(
            {
                "id": client.id,
                "local_seconds": round(client.frames / FRAMES_PER_SECOND, 2),
                "mel_l1": {m.value: round(means[m], 5) for m in METHODS},
                "node_default_mel_l1": round(node_mean, 5),
                "best": winner.value,
                "best_or_tied": [m.value for m in best],
            }
        )
    total = len(clients)
    # When the node's default is the method's own run, its count is the method's (one bootstrap).
    shared = all(n is m for n, m in zip(node_models, models[default], strict=True))
    node_wins = beats_rivals[default] if shared else node_beats_rivals
    return {
        "clients": per_client,
        "best_fraction": {m.value: round(best_counts[m] / total, 4) for m in METHODS},
        "best_fraction_ci95": {m.value: wilson(best_counts[m], total) for m in METHODS},
        # The node's default (fl.personalization = "auto") for this amount of audio, as a
        # federation of nodes runs it (node_round), against local and fedavg_ft.
        "default_method": default.value,
        "default_best_fraction": round(node_wins / total, 4),
        "default_best_fraction_ci95": wilson(node_wins, total),
        # Every method's share of clients where it is best or tied against local and fedavg_ft.
        "vs_local_and_fedavg_ft": {m.value: round(beats_rivals[m] / total, 4) for m in METHODS},
    }


def load_clients(plan: StudyPlan, cache_dir: Path, progress: Progress) -> list[Client]:
    corpus = build_corpus(
        cache_dir,
        speakers=plan.speakers,
        train_per_speaker=min(80, math.ceil(max(plan.seconds) / MIN_UTTERANCE_S) + 1),
        heldout_per_speaker=plan.heldout_per_speaker,
        progress=progress,
    )
    return [
        Client(
            id=speaker.id,
            train=tuple(log_mel(load_audio(u.wav_path)) for u in speaker.train),
            heldout=tuple(log_mel(load_audio(u.wav_path)) for u in speaker.heldout),
        )
        for speaker in corpus.speakers
    ]


QUICK_STUDY: Final = StudyPlan(
    seconds=(5.0,), speakers=UNSEEN_SPEAKERS[:2], rounds=1, local_steps=3, heldout_per_speaker=3
)
FULL_STUDY: Final = StudyPlan()


def run_study(plan: StudyPlan, *, cache_dir: Path, progress: Progress) -> dict[str, Any]:
    started = time.monotonic()
    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    config = shipped.codec_config
    start = {name: np.asarray(value, dtype=np.float32) for name, value in shipped.state.items()}
    everyone = load_clients(plan, cache_dir, progress)
    by_seconds: dict[str, Any] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        for seconds in plan.seconds:
            clients = [
                Client(id=c.id, train=first_seconds(c.train, seconds), heldout=c.heldout)
                for c in everyone
            ]
            default = default_method(seconds)
            models, node_models = run_federation(clients, start, config, plan, node_default=default)
            by_seconds[f"{seconds:g}"] = score(
                clients, models, config, plan.seed, default=default, node_models=node_models
            )
            progress(f"{seconds:g} s: {by_seconds[f'{seconds:g}']['best_fraction']}")
    finally:
        torch.set_num_threads(previous)
    return {
        "by_local_seconds": by_seconds,
        "methods": [m.value for m in METHODS],
        "default_rule": [
            [None if math.isinf(up_to) else up_to, method.value] for up_to, method in DEFAULT_RULE
        ],
        "clients": [c.id for c in everyone],
        "rounds": plan.rounds,
        "local_steps_per_round": plan.local_steps,
        "batch_size": plan.batch_size,
        "metric": "held-out log-mel L1 through the quantizer (per utterance)",
        "seed": plan.seed,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--seconds", type=float, nargs="+", default=list(StudyPlan().seconds))
    parser.add_argument("--rounds", type=int, default=StudyPlan().rounds)
    parser.add_argument("--local-steps", type=int, default=StudyPlan().local_steps)
    parser.add_argument(
        "--clients",
        choices=sorted(CLIENT_SETS),
        default="eval",
        help="eval: the unseen voices figures are reported on; tuning: the voices the node's "
        "default is chosen on (default: eval)",
    )
    parser.add_argument(
        "--client-count", type=int, default=None, help="only the first N clients of the set"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    arguments = parser.parse_args(argv)
    plan = StudyPlan(
        seconds=tuple(arguments.seconds),
        speakers=CLIENT_SETS[arguments.clients][: arguments.client_count],
        rounds=arguments.rounds,
        local_steps=arguments.local_steps,
        threads=arguments.threads,
        seed=arguments.seed,
    )
    result = run_study(
        plan,
        cache_dir=arguments.cache_dir or default_cache_dir(),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
