"""``parley simulate``: N real nodes in one trio process, federating their codecs over loopback.

Theory of operation
-------------------
Every node is the real daemon (:func:`daemon.node.open_node`): its own home, identity, SQLite
database, codec checkpoint and TCP port on 127.0.0.1, static peers (or mDNS bound to
127.0.0.1), and every exchange is a real Noise XK handshake carrying real bundles. Node *i* is
given one synthetic speaker of the multi-speaker corpus (:mod:`simulations.corpus`): its
training utterances are its enrolled audio, its held-out utterances are scored at the end, so
the federation is non-IID by construction. With more nodes than voices, speakers repeat.

Each simulated round, all nodes run a round at once, as deployed nodes would: train
``local_steps`` on their own audio (APFL-style, every round), exchange bundles with every
trusted peer, aggregate, form the personal model by the nodes' ``fl.personalization``
(``--personalization``; the node's default ``auto`` unless given:
:func:`fl.personalize.round_personal`, the code the study and the Flower app share),
checkpoint, record. Three models are tracked per node:

* *personalized*: the node's own checkpoint after the round (what it uses);
* *global*: the round's federated average, as the node computed it;
* *local-only*: the same training (same steps, seed and data) without ever federating,
  computed beside the nodes as the baseline.

``--poison K`` makes the last K nodes attackers: instead of their model they send a valid,
correctly hashed bundle of scaled (x100) or noise weights, so only the aggregation's checks
(validation, norm clipping, the robust statistic with 5 or more bundles) stand in the way. The
report keeps every round's record, with the bundles each node rejected or clipped and why.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from codec.bundle import bundle_from_state, state_from_bundle
from codec.config import CodecConfig
from codec.model import expected_shapes, new_model, state_to_numpy
from common.atomic import write_atomic
from daemon.config import Config, render_default_config
from daemon.enroll import store_features
from daemon.home import NodeHome
from daemon.identity import Identity, save_identity
from daemon.node import NodeOptions, RunningNode, open_node
from fl.aggregate import AggregationResult
from fl.config import TrainConfig
from fl.personalize import AUTO, NODE_SETTINGS
from fl.train import encode_decode, evaluate_l1, train_codec
from schemas.messages import WeightsBundle
from simulations.corpus import DEFAULT_SPEAKERS, build_corpus, default_cache_dir

POISON_KINDS: Final = ("scale", "noise")
POISON_SCALE: Final = 100.0
POISON_NOISE_STD: Final = 10.0
WHISPER_MAX_NEW_TOKENS: Final = 128

State = dict[str, npt.NDArray[np.float32]]
Progress = Callable[[str, float], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class SimulationSettings:
    nodes: int
    rounds: int
    alpha: float = 0.7
    #: ``fl.personalization`` of every node (:data:`fl.personalize.NODE_SETTINGS`).
    personalization: str = AUTO
    poison: int = 0
    poison_kind: str = "scale"
    seed: int = 0
    local_steps: int = 60
    train_per_speaker: int = 6
    heldout_per_speaker: int = 2
    mdns: bool = False
    measure_wer: bool = True
    #: Score every node's three models after every round (the plots); False scores the last
    #: round only (CI-sized studies: the scoring, not the federation, dominates their time).
    score_every_round: bool = True
    codec: CodecConfig = field(default_factory=CodecConfig)

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= 64:
            raise ValueError(f"--nodes must be 2..64, got {self.nodes}")
        if not 1 <= self.rounds <= 1000:
            raise ValueError(f"--rounds must be 1..1000, got {self.rounds}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be 0..1, got {self.alpha}")
        if self.personalization not in NODE_SETTINGS:
            raise ValueError(
                f"--personalization must be one of {', '.join(NODE_SETTINGS)}, "
                f"got {self.personalization!r}"
            )
        if not 0 <= self.poison < self.nodes:
            raise ValueError(f"--poison must be 0..{self.nodes - 1}, got {self.poison}")
        if self.poison_kind not in POISON_KINDS:
            raise ValueError(f"poison kind must be one of {POISON_KINDS}")
        if self.local_steps < 1 or self.train_per_speaker < 1 or self.heldout_per_speaker < 1:
            raise ValueError("local steps and utterance counts must be positive")


@dataclass(slots=True)
class _NodeData:
    index: int
    speaker_id: str
    poisoned: bool
    train: list[npt.NDArray[np.float32]]
    heldout: list[npt.NDArray[np.float32]]
    heldout_texts: list[str]
    local_only: State | None = None
    personal_final: State | None = None
    global_by_round: dict[int, State] = field(default_factory=dict)


def _poisoner(
    kind: str, seed: int, config: CodecConfig
) -> Callable[[WeightsBundle], WeightsBundle]:
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(config)

    def poison(honest: WeightsBundle) -> WeightsBundle:
        state = state_from_bundle(
            honest, expected_architecture_id=config.architecture_id, expected_shapes=shapes
        )
        if kind == "scale":
            bad = {name: (value * POISON_SCALE).astype(np.float32) for name, value in state.items()}
        else:
            bad = {
                name: rng.normal(0.0, POISON_NOISE_STD, value.shape).astype(np.float32)
                for name, value in state.items()
            }
        return bundle_from_state(
            bad,
            architecture_id=honest.architecture_id,
            round=honest.round,
            sample_count=honest.sample_count,
        )

    return poison


def _norm(state: State) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.square(value, dtype=np.float64))) for value in state.values()))
    )


def _l1(config: CodecConfig, state: State, features: Sequence[npt.NDArray[np.float32]]) -> float:
    return float(evaluate_l1(new_model(config, state), features))


def _load_data(
    settings: SimulationSettings, cache_dir: Path, progress: Progress
) -> list[_NodeData]:
    from media.audio import load_audio
    from media.features import log_mel

    voices = DEFAULT_SPEAKERS[: min(settings.nodes, len(DEFAULT_SPEAKERS))]
    progress("synthesizing the corpus", 0.0)
    corpus = build_corpus(
        cache_dir,
        speakers=voices,
        train_per_speaker=settings.train_per_speaker,
        heldout_per_speaker=settings.heldout_per_speaker,
    )
    data: list[_NodeData] = []
    for index in range(settings.nodes):
        speaker = corpus.speakers[index % len(corpus.speakers)]
        data.append(
            _NodeData(
                index=index,
                speaker_id=speaker.id,
                poisoned=index >= settings.nodes - settings.poison,
                train=[log_mel(load_audio(u.wav_path)) for u in speaker.train],
                heldout=[log_mel(load_audio(u.wav_path)) for u in speaker.heldout],
                heldout_texts=[u.text for u in speaker.heldout],
            )
        )
    return data


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _make_homes(root: Path, count: int) -> list[tuple[NodeHome, Identity]]:
    homes = []
    for index in range(count):
        home = NodeHome(root / f"n{index}")
        home.create()
        identity = Identity.generate()
        save_identity(identity, home.identity_path)
        write_atomic(home.config_path, render_default_config().encode())
        homes.append((home, identity))
    return homes


def _node_config(settings: SimulationSettings, index: int, statics: tuple[str, ...]) -> Config:
    config = Config()
    config = config.replace("node", name=f"sim{index}", log_level="warning")
    config = config.replace("listen", host="127.0.0.1")
    config = config.replace(
        "discovery", mdns=settings.mdns, interfaces=("127.0.0.1",), static_peers=statics
    )
    # Every simulated peer dials from 127.0.0.1: the per-address handshake rate limit, meant
    # for one host, would throttle the whole federation.
    config = config.replace("session", handshakes_per_address_per_s=10_000.0)
    return config.replace(
        "fl",
        round_interval_min=0,
        alpha=settings.alpha,
        personalization=settings.personalization,
        local_steps=settings.local_steps,
    )


async def run_simulation(
    settings: SimulationSettings,
    *,
    out_dir: Path,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the study; write ``out_dir/report.json`` and the plots; return the report."""
    report_progress: Progress = progress or (lambda _what, _fraction: None)
    started = time.monotonic()
    data = await trio.to_thread.run_sync(
        _load_data, settings, cache_dir or default_cache_dir(), report_progress
    )
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="psim"))  # short: AF_UNIX path limit
    try:
        homes = _make_homes(root, settings.nodes)
        for node_data, (home, _identity) in zip(data, homes, strict=True):
            for features in node_data.train:
                store_features(home.features_dir, features)
        report = await _run_nodes(settings, data, homes, report_progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if settings.measure_wer:
        report_progress("scoring held-out speech with Whisper", 0.97)
        await trio.to_thread.run_sync(_add_delta_wer, settings, data, report)
    report["wall_s"] = time.monotonic() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2).encode(), mode=0o644)
    _plot(report, out_dir)
    report_progress("done", 1.0)
    return report


async def _run_nodes(
    settings: SimulationSettings,
    data: list[_NodeData],
    homes: list[tuple[NodeHome, Identity]],
    progress: Progress,
) -> dict[str, Any]:
    config = settings.codec
    ports = _free_ports(settings.nodes)
    per_node: list[dict[str, Any]] = [
        {"node": item.index, "speaker": item.speaker_id, "poisoned": item.poisoned, "rounds": []}
        for item in data
    ]
    rounds_report: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        nodes: list[RunningNode] = []
        for index, (home, _identity) in enumerate(homes):
            statics = (
                ()
                if settings.mdns
                else tuple(
                    f"127.0.0.1:{ports[other]}:{homes[other][1].public_key.hex()}"
                    for other in range(settings.nodes)
                    if other != index
                )
            )

            def collect(
                number: int, result: AggregationResult, item: _NodeData = data[index]
            ) -> None:
                item.global_by_round[number] = result.global_state

            options = NodeOptions(
                listen_port=ports[index],
                codec=config,
                train=TrainConfig(
                    steps=settings.local_steps, seed=settings.seed + index, threads=1
                ),
                train_each_round=True,
                on_aggregated=collect,
                outgoing_bundle=(
                    _poisoner(settings.poison_kind, settings.seed + index, config)
                    if data[index].poisoned
                    else None
                ),
            )
            nodes.append(
                await stack.enter_async_context(
                    open_node(home, _node_config(settings, index, statics), options)
                )
            )
        if settings.mdns:
            with trio.fail_after(60):
                while not all(len(node.peers.present()) == settings.nodes - 1 for node in nodes):
                    await trio.sleep(0.1)
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.peers.trust(other.identity.public_key.hex())

        init_state = dict(nodes[0].codecs.current().checkpoint.state)
        local_only: list[State] = [dict(init_state) for _ in nodes]
        for number in range(1, settings.rounds + 1):
            progress(f"round {number}/{settings.rounds}", (number - 1) / settings.rounds * 0.95)
            stats_before = [node.connections.stats.as_dict() for node in nodes]
            round_started = time.monotonic()
            records: list[Any] = [None] * len(nodes)

            async def one(index: int, records: list[Any] = records) -> None:
                records[index] = await nodes[index].scheduler.run_round()

            async with trio.open_nursery() as nursery:
                for index in range(len(nodes)):
                    nursery.start_soon(one, index)
                for index in range(len(nodes)):
                    nursery.start_soon(
                        partial(
                            _train_local_only,
                            config,
                            settings=settings,
                            item=data[index],
                            states=local_only,
                            index=index,
                        )
                    )
            wall = time.monotonic() - round_started
            stats_after = [node.connections.stats.as_dict() for node in nodes]
            rounds_report.append(
                {
                    "round": number,
                    "wall_s": wall,
                    "bytes_exchanged": sum(
                        int(after["bytes_sent"]) - int(before["bytes_sent"])  # type: ignore[call-overload]
                        for before, after in zip(stats_before, stats_after, strict=True)
                    ),
                    "handshakes": sum(
                        int(after["handshakes_completed"]) - int(before["handshakes_completed"])  # type: ignore[call-overload]
                        for before, after in zip(stats_before, stats_after, strict=True)
                    ),
                }
            )
            for index, node in enumerate(nodes):
                record = records[index]
                personal = dict(node.codecs.current().checkpoint.state)
                global_state = data[index].global_by_round.get(record.round_number, personal)
                item = data[index]
                row: dict[str, Any] = {
                    "round": number,
                    "status": record.status.value,
                    "personal_norm": _norm(personal),
                    "record": dict(record.record),
                }
                if settings.score_every_round or number == settings.rounds:
                    row["train_l1"] = {
                        "personal": _l1(config, personal, item.train),
                        "global": _l1(config, global_state, item.train),
                        "local": _l1(config, local_only[index], item.train),
                    }
                    row["heldout_l1"] = {
                        "personal": _l1(config, personal, item.heldout),
                        "global": _l1(config, global_state, item.heldout),
                        "local": _l1(config, local_only[index], item.heldout),
                    }
                per_node[index]["rounds"].append(row)
        for index, node in enumerate(nodes):
            data[index].local_only = local_only[index]
            data[index].personal_final = dict(node.codecs.current().checkpoint.state)
    honest = [entry for entry in per_node if not entry["poisoned"]]
    last = [entry["rounds"][-1]["heldout_l1"] for entry in honest]
    summary = {
        kind: float(np.mean([row[kind] for row in last]))
        for kind in ("local", "global", "personal")
    }
    return {
        "settings": {k: v for k, v in asdict(settings).items() if k != "codec"}
        | {"codec": settings.codec.architecture_id, "kbps": settings.codec.kbps},
        "nodes": per_node,
        "rounds": rounds_report,
        "honest_heldout_l1_final": summary,
        "personal_best_fraction": float(
            np.mean([min(row, key=row.__getitem__) == "personal" for row in last])
        )
        if last
        else math.nan,
    }


async def _train_local_only(
    config: CodecConfig,
    *,
    settings: SimulationSettings,
    item: _NodeData,
    states: list[State],
    index: int,
) -> None:
    def train() -> State:

        model = new_model(config, states[index])
        train_codec(
            model,
            item.train,
            TrainConfig(steps=settings.local_steps, seed=settings.seed + index, threads=1),
        )
        return state_to_numpy(model)

    states[index] = await trio.to_thread.run_sync(train)


def _add_delta_wer(
    settings: SimulationSettings, data: list[_NodeData], report: dict[str, Any]
) -> None:
    """ΔWER of each node's three final models on its held-out speech (Whisper on decoded mel)."""
    from media.asr import DecodeOptions, FeatureTranscriber
    from media.models import load_whisper
    from simulations.codec_eval import Scorer

    # The eval's scoring: greedy, no temperature fallback, bounded tokens, so a codec that
    # decodes garbage costs one bounded decode instead of six hallucinating ones.
    options = DecodeOptions(
        beam_size=1,
        best_of=1,
        temperatures=(0.0,),
        word_timestamps=False,
        max_new_tokens=WHISPER_MAX_NEW_TOKENS,
    )
    scorer = Scorer(FeatureTranscriber(load_whisper(), options=options), window_s=28.0)
    config = settings.codec

    def wer_of(features: Sequence[npt.NDArray[np.float32]], texts: Sequence[str]) -> float:
        return float(scorer.wer_counts(texts, features).wer)

    for entry, item in zip(report["nodes"], data, strict=True):
        assert item.personal_final is not None and item.local_only is not None
        personal = item.personal_final
        clean = wer_of(item.heldout, item.heldout_texts)
        finals = {
            "personal": personal,
            "global": item.global_by_round.get(settings.rounds, personal),
            "local": item.local_only,
        }
        entry["wer_clean"] = clean
        entry["delta_wer"] = {}
        for kind, state in finals.items():
            model = new_model(config, state)
            decoded = [encode_decode(model, mel) for mel in item.heldout]
            entry["delta_wer"][kind] = wer_of(decoded, item.heldout_texts) - clean


def _plot(report: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    colours = {"local": "tab:gray", "global": "tab:blue", "personal": "tab:orange"}
    for axis, split in zip(axes, ("train_l1", "heldout_l1"), strict=True):
        honest = [
            [row for row in entry["rounds"] if split in row]
            for entry in report["nodes"]
            if not entry["poisoned"]
        ]
        for kind, colour in colours.items():
            for scored in honest:
                axis.plot(
                    [row["round"] for row in scored],
                    [row[split][kind] for row in scored],
                    color=colour,
                    alpha=0.25,
                    linewidth=0.8,
                )
            rounds = [row["round"] for row in honest[0]]
            means = [
                np.mean([scored[i][split][kind] for scored in honest]) for i in range(len(rounds))
            ]
            axis.plot(rounds, means, color=colour, linewidth=2.2, label=f"{kind} (mean)")
        axis.set_title(
            f"{'training' if split == 'train_l1' else 'held-out'} log-mel L1, honest nodes"
        )
        axis.set_xlabel("round")
        axis.set_ylabel("mel L1 (through quantization)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "loss_per_round.png", dpi=110)
    plt.close(figure)


def main_sync(
    settings: SimulationSettings,
    *,
    out_dir: Path,
    cache_dir: Path | None,
    progress: Progress | None,
) -> dict[str, Any]:
    return trio.run(
        lambda: run_simulation(settings, out_dir=out_dir, cache_dir=cache_dir, progress=progress)
    )


__all__ = ["SimulationSettings", "main_sync", "run_simulation"]
