"""Personalized FedAvg of the CSM as a Flower app (Message API): ClientApp, ServerApp, Strategy.

Theory of operation
-------------------
A parley node runs a whole personalized-FedAvg round by itself: it averages its own and its
peers' weights and mixes the average into its own model (:func:`fl.aggregate.aggregate_round`).
With Flower a server sits in the middle, so the same round is split in two halves, each calling
the shared code, never a copy of it:

* **Server** (:class:`PersonalizedFedAvg.aggregate_train`): the clients' replies become
  :class:`~fl.aggregate.PeerUpdate` s and the global model is
  ``aggregate_round(reference, clients, aggregation).global_state``, where ``reference`` is the
  previous global model under the peer id ``"server"`` with ``sample_count=1``
  (:data:`REFERENCE_SAMPLE_COUNT`). So the server gets everything a node gets: validation
  (architecture, names, shapes, finite values, positive counts, duplicate ids; a bad reply is
  recorded and left out), clipping of every client's update to ``clip_norm_ratio *
  ||previous global||``, the sample-weighted mean or, from ``min_bundles_for_robust`` client
  bundles (the server adds one to the threshold, since the reference is not a client), the
  robust statistic, and the bound ``||new global - previous global|| <= clip_norm_ratio *
  ||previous global||``. The reference is one participant: with weight one frame against the
  clients' thousands it moves the weighted mean by under 1/(1 + total frames) of the way back,
  and in the robust statistics it is one point among K + 1. ``personal_state`` is not used on
  the server, which has no data of its own. One guarantee differs from a node's: a node bounds
  ``||personal - local||`` by clipping around its *own* model; here clipping is around the
  previous global model, so what bounds a client's step is the server's bound on the global.
* **Client, train** (:func:`train_client`): ``personal = fl.personalize.personalize(local,
  global, alpha)``, where ``local`` is the model this client trained last round, kept in
  ``context.state`` (an ArrayRecord under :data:`LOCAL_MODEL_KEY`); in the first round the
  client starts from the initial global model (the seeded init every node shares). It trains
  ``personal`` on its own features (:func:`fl.train.train_codec`), keeps the result as its new
  ``local`` and sends it. ``personalize`` is the formula of ``aggregate_round``'s last step, so a
  node and a Flower client holding the same ``local`` and ``global`` form the same model.
* **Client, evaluate** (:func:`evaluate_client`): held-out log-mel L1 (:func:`fl.train.evaluate_l1`)
  of three models on the client's own held-out features: *local-only* (a second model the client
  trains with the same steps and seeds but never mixes, the baseline), *global* (the model the
  server just computed) and *personal* (``personalize(local, global, alpha)``).

Every message carries the whole client plan (codec shape, training settings, alpha, where the
data comes from) as JSON in its ConfigRecord, so a client needs no configuration of its own
beyond its ``partition-id`` (``node_config``). Nothing here does work at import time: Ray
re-imports this module in every worker.

Client data (:func:`load_client_data`) is one speaker per client, so clients are non-IID:

* ``"synthetic"``: :func:`synthetic_client_data`, a deterministic generator of log-mel-like
  features (formant bumps that drift, harmonic ripple, spectral tilt, syllable-rate energy,
  noise, clamped like Whisper's front end), with per-client parameters drawn from
  ``(seed, partition-id)``. It is not speech: it exists so hundreds of clients cost nothing to
  set up.
* ``"prepared"``: log-mel features of the synthesized multi-speaker corpus, written by
  :func:`simulations.flower_sim.prepare_corpus_features` (or any directory of the same layout,
  which a SuperNode can name with ``--node-config 'data-dir="..."'``). Client ``p`` reads speaker
  ``p mod S``; clients beyond the ``S`` speakers reuse a speaker through
  :func:`speaker_variant` (a pitch-like shift of the mel axis and a spectral tilt).
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from codec.config import CodecConfig
from codec.model import CodecModel, expected_shapes, load_numpy_state, new_model, state_to_numpy
from fl.aggregate import AggregationResult, PeerUpdate, aggregate_round
from fl.config import AggregationConfig, TrainConfig
from fl.errors import FLError
from fl.personalize import personalize
from fl.train import evaluate_l1, train_codec

FloatArray = npt.NDArray[np.float32]
State = dict[str, FloatArray]
DataSource = Literal["synthetic", "prepared"]
MetricValue = int | float | list[int] | list[float]

#: Keys of the records inside every message.
ARRAYS_KEY: Final = "arrays"
CONFIG_KEY: Final = "config"
METRICS_KEY: Final = "metrics"
META_KEY: Final = "meta"
PLAN_KEY: Final = "plan"
#: Keys of the client's own state (``context.state``), which persists across rounds.
LOCAL_MODEL_KEY: Final = "local-model"
LOCAL_ONLY_MODEL_KEY: Final = "local-only-model"
#: The previous global model takes part in the server's aggregation with this weight.
REFERENCE_SAMPLE_COUNT: Final = 1
REFERENCE_PEER_ID: Final = "server"
#: How often the server looks for SuperNodes that have not connected yet.
NODE_POLL_INTERVAL_S: Final = 0.2
PREPARED_INDEX_FILE: Final = "speakers.json"

logger = logging.getLogger(__name__)


class FlowerAppError(FLError):
    """Bad settings, a bad run config, unusable client data or a malformed message."""


class FlowerRunError(FlowerAppError):
    """A Flower run went wrong: a client failed or went missing, or rounds did not complete."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def _checked(kind: type[Any], **values: Any) -> Any:
    """``kind(**values)``, with a config's ValueError/TypeError turned into FlowerAppError."""
    try:
        return kind(**values)
    except (TypeError, ValueError) as error:
        raise FlowerAppError(f"bad {kind.__name__}: {error}") from error


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPlan:
    """Everything a client needs for a round; it travels as JSON in every message."""

    codec: CodecConfig = field(default_factory=CodecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    alpha: float = 0.7
    data_source: DataSource = "synthetic"
    #: Directory of prepared features (``"prepared"`` only); a node_config ``data-dir`` wins.
    data_dir: str = ""
    data_seed: int = 0
    #: Synthetic data: training utterances per client and frames per utterance.
    synthetic_utterances: int = 4
    synthetic_frames: int = 160
    #: Also train the local-only baseline (doubles the clients' training time).
    track_local_only: bool = True

    def __post_init__(self) -> None:
        # alpha is checked by the same rules as the node's (AggregationConfig).
        _checked(AggregationConfig, alpha=self.alpha)
        if self.data_source not in ("synthetic", "prepared"):
            raise FlowerAppError(
                f"data source must be 'synthetic' or 'prepared', got {self.data_source!r}"
            )
        if self.data_source == "prepared" and not self.data_dir:
            raise FlowerAppError("data source 'prepared' needs a data directory")
        for name, value, low, high in (
            ("data_seed", self.data_seed, 0, 2**63 - 1),
            ("synthetic_utterances", self.synthetic_utterances, 1, 1000),
            ("synthetic_frames", self.synthetic_frames, 8, 100_000),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise FlowerAppError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        if not isinstance(self.track_local_only, bool):
            raise FlowerAppError("track_local_only must be a bool")

    def to_json(self) -> str:
        return json.dumps(
            {
                "codec": self.codec.to_json_dict(),
                "train": dataclasses.asdict(self.train),
                "alpha": self.alpha,
                "data_source": self.data_source,
                "data_dir": self.data_dir,
                "data_seed": self.data_seed,
                "synthetic_utterances": self.synthetic_utterances,
                "synthetic_frames": self.synthetic_frames,
                "track_local_only": self.track_local_only,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ClientPlan:
        """Inverse of :meth:`to_json`; anything unexpected is a :class:`FlowerAppError`."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as error:
            raise FlowerAppError(f"client plan is not JSON: {error}") from error
        if not isinstance(data, dict):
            raise FlowerAppError("client plan must be a JSON object")
        expected = {field_.name for field_ in dataclasses.fields(cls)}
        if set(data) != expected:
            raise FlowerAppError(f"client plan keys must be {sorted(expected)}, got {sorted(data)}")
        try:
            codec = CodecConfig.from_json_dict(data.pop("codec"))
        except ValueError as error:
            raise FlowerAppError(f"bad codec config in the client plan: {error}") from error
        train = data.pop("train")
        if not isinstance(train, dict):
            raise FlowerAppError("client plan train settings must be a JSON object")
        return _checked(cls, codec=codec, train=_checked(TrainConfig, **train), **data)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """What the ServerApp runs: the client plan, the aggregation and the run's shape."""

    plan: ClientPlan = field(default_factory=ClientPlan)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    rounds: int = 3
    #: Nodes to wait for before a round, and the replies every round must get.
    expected_nodes: int = 2
    round_timeout_s: float = 600.0
    node_wait_timeout_s: float = 120.0
    #: Where the server writes its JSON summary (also on failure); empty: nowhere.
    result_path: str = ""

    def __post_init__(self) -> None:
        if self.aggregation.alpha != self.plan.alpha:
            raise FlowerAppError(
                f"aggregation alpha {self.aggregation.alpha} differs from the clients' "
                f"{self.plan.alpha}"
            )
        for name, value, high in (
            ("rounds", self.rounds, 100_000),
            ("expected_nodes", self.expected_nodes, 1_000_000),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise FlowerAppError(f"{name} must be an int in [1, {high}], got {value!r}")
        for name, seconds in (
            ("round_timeout_s", self.round_timeout_s),
            ("node_wait_timeout_s", self.node_wait_timeout_s),
        ):
            if not isinstance(seconds, int | float) or not 0 < seconds < math.inf:
                raise FlowerAppError(f"{name} must be a positive number, got {seconds!r}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerSettings:
        """Settings from a Flower run config (``[tool.flwr.app.config]`` + ``--run-config``).

        Every key is optional (the defaults above apply); an unknown key or a value of the wrong
        type is a :class:`FlowerAppError`, so a typo never silently runs the default.
        """
        known = set(RUN_CONFIG_KEYS)
        unknown = sorted(set(run_config) - known)
        if unknown:
            raise FlowerAppError(f"unknown run config keys {unknown}; known: {sorted(known)}")

        def get(key: str, kind: type[Any], default: Any) -> Any:
            if key not in run_config:
                return default
            value = run_config[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise FlowerAppError(
                    f"run config {key} must be {kind.__name__}, got {type(value).__name__}"
                )
            return value

        defaults = cls()
        codec = _checked(
            CodecConfig,
            **{
                **defaults.plan.codec.to_json_dict(),
                "hidden": get("codec-hidden", int, defaults.plan.codec.hidden),
                "latent_dim": get("codec-latent-dim", int, defaults.plan.codec.latent_dim),
                "blocks": get("codec-blocks", int, defaults.plan.codec.blocks),
            },
        )
        train = _checked(
            TrainConfig,
            steps=get("local-steps", int, defaults.plan.train.steps),
            batch_size=get("batch-size", int, defaults.plan.train.batch_size),
            crop_frames=get("crop-frames", int, defaults.plan.train.crop_frames),
            learning_rate=get("learning-rate", float, defaults.plan.train.learning_rate),
            seed=get("seed", int, defaults.plan.train.seed),
        )
        alpha = get("alpha", float, defaults.plan.alpha)
        plan = ClientPlan(
            codec=codec,
            train=train,
            alpha=alpha,
            data_source=get("data-source", str, defaults.plan.data_source),
            data_dir=get("data-dir", str, defaults.plan.data_dir),
            data_seed=get("seed", int, defaults.plan.data_seed),
            synthetic_utterances=get(
                "synthetic-utterances", int, defaults.plan.synthetic_utterances
            ),
            synthetic_frames=get("synthetic-frames", int, defaults.plan.synthetic_frames),
            track_local_only=get("track-local-only", bool, defaults.plan.track_local_only),
        )
        aggregation = _checked(
            AggregationConfig,
            alpha=alpha,
            clip_norm_ratio=get("clip-norm-ratio", float, defaults.aggregation.clip_norm_ratio),
            robust=get("robust", str, defaults.aggregation.robust),
            trim_fraction=get("trim-fraction", float, defaults.aggregation.trim_fraction),
            min_bundles_for_robust=get(
                "min-bundles-for-robust", int, defaults.aggregation.min_bundles_for_robust
            ),
        )
        return cls(
            plan=plan,
            aggregation=aggregation,
            rounds=get("num-server-rounds", int, defaults.rounds),
            expected_nodes=get("num-supernodes", int, defaults.expected_nodes),
            round_timeout_s=get("round-timeout-s", float, defaults.round_timeout_s),
            node_wait_timeout_s=get("node-wait-timeout-s", float, defaults.node_wait_timeout_s),
            result_path=get("result-path", str, defaults.result_path),
        )


#: The keys :meth:`ServerSettings.from_run_config` understands.
RUN_CONFIG_KEYS: Final = (
    "num-server-rounds",
    "num-supernodes",
    "alpha",
    "seed",
    "local-steps",
    "batch-size",
    "crop-frames",
    "learning-rate",
    "codec-hidden",
    "codec-latent-dim",
    "codec-blocks",
    "clip-norm-ratio",
    "robust",
    "trim-fraction",
    "min-bundles-for-robust",
    "data-source",
    "data-dir",
    "synthetic-utterances",
    "synthetic-frames",
    "track-local-only",
    "round-timeout-s",
    "node-wait-timeout-s",
    "result-path",
)


# --------------------------------------------------------------------------------------------
# Client data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientData:
    """One client's log-mel features, each ``(n_mels, T)``: its own training and held-out sets."""

    train: tuple[FloatArray, ...]
    heldout: tuple[FloatArray, ...]

    @property
    def train_frames(self) -> int:
        return sum(item.shape[1] for item in self.train)


def _whisper_clamp(log_mel: npt.NDArray[np.float64]) -> FloatArray:
    # Whisper's front end floors everything 8 decades under the loudest bin; after its
    # (x + 4) / 4 scaling that is 2 units.
    clamped: FloatArray = np.maximum(log_mel, log_mel.max() - 2.0).astype(np.float32)
    return clamped


def synthetic_client_data(
    partition_id: int, *, seed: int, utterances: int, frames: int, n_mels: int = 80
) -> ClientData:
    """Deterministic log-mel-like features of one synthetic "speaker" (not speech).

    Speaker traits drawn from ``(seed, partition_id)``: three formant-like bumps (centre, width,
    height) that drift over time, a harmonic ripple across the bins whose spacing plays the role
    of pitch, a spectral tilt and a syllable rate. ``utterances`` training sequences and
    ``max(1, utterances // 2)`` held-out ones, ``frames`` frames each.
    """
    rng = np.random.default_rng([seed, partition_id])
    bins = np.arange(n_mels, dtype=np.float64)[:, None] / max(1, n_mels - 1)
    centres = np.sort(rng.uniform([0.08, 0.25, 0.45], [0.22, 0.45, 0.7]))
    widths = rng.uniform(0.03, 0.08, size=3)
    heights = rng.uniform(0.5, 1.2, size=3)
    drift = rng.uniform(0.01, 0.05, size=3)
    ripple_period = rng.uniform(0.04, 0.12)
    ripple_depth = rng.uniform(0.05, 0.25)
    tilt = rng.uniform(-1.2, -0.3)
    syllables_per_s = rng.uniform(3.0, 6.0)

    def utterance() -> FloatArray:
        t = np.arange(frames, dtype=np.float64)[None, :] / 100.0
        phase = rng.uniform(0, 2 * np.pi, size=4)
        spectrum = tilt * bins + ripple_depth * np.cos(2 * np.pi * bins / ripple_period + phase[3])
        for k in range(3):
            centre = centres[k] + drift[k] * np.sin(2 * np.pi * 1.5 * t + phase[k])
            spectrum = spectrum + heights[k] * np.exp(
                -((bins - centre) ** 2) / (2 * widths[k] ** 2)
            )
        energy = np.clip(np.sin(2 * np.pi * syllables_per_s * t + phase[0]), 0.0, None)
        log_mel = 0.2 + energy * (spectrum + 0.4) + 0.05 * rng.standard_normal((n_mels, frames))
        return _whisper_clamp(log_mel)

    train = tuple(utterance() for _ in range(utterances))
    heldout = tuple(utterance() for _ in range(max(1, utterances // 2)))
    return ClientData(train=train, heldout=heldout)


def speaker_variant(features: FloatArray, variant: int) -> FloatArray:
    """A per-client transform that turns one corpus speaker into several clients.

    Variant 0 is the speaker unchanged. Variant ``v > 0`` shifts the mel axis by
    ``(+1, -1, +2, -2)[(v - 1) % 4]`` bins (a crude pitch/formant shift; the edge bin is repeated,
    not wrapped) and adds a spectral tilt of ``±0.05 * (1 + (v - 1) // 4)`` from the lowest to
    the highest bin. It makes more clients than speakers distinct, not more realistic.
    """
    if variant < 0:
        raise FlowerAppError(f"speaker variant must be >= 0, got {variant}")
    if variant == 0:
        return features
    shift = (1, -1, 2, -2)[(variant - 1) % 4]
    tilt = 0.05 * (1 + (variant - 1) // 4) * (1 if variant % 2 else -1)
    n_mels = features.shape[0]
    source = np.clip(np.arange(n_mels) - shift, 0, n_mels - 1)
    shifted = features[source]
    ramp = np.linspace(-0.5, 0.5, n_mels, dtype=np.float64)[:, None]
    return (shifted + tilt * ramp).astype(np.float32)


def _prepared_speakers(directory: Path) -> list[str]:
    index = directory / PREPARED_INDEX_FILE
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FlowerAppError(f"no prepared features at {directory} ({index} missing)") from error
    except (OSError, ValueError) as error:
        raise FlowerAppError(f"cannot read {index}: {error}") from error
    speakers = data.get("speakers") if isinstance(data, dict) else None
    if (
        not isinstance(speakers, list)
        or not speakers
        or not all(isinstance(item, str) for item in speakers)
    ):
        raise FlowerAppError(f"{index} must hold a non-empty list of speaker ids")
    return speakers


def load_prepared_client_data(directory: Path, partition_id: int, n_mels: int) -> ClientData:
    """Client ``partition_id``'s features from a directory of prepared corpus features."""
    speakers = _prepared_speakers(directory)
    speaker_index = partition_id % len(speakers)
    variant = partition_id // len(speakers)
    path = directory / f"speaker-{speaker_index}.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise FlowerAppError(f"cannot read prepared features {path}: {error}") from error
    train = [arrays[name] for name in sorted(arrays) if name.startswith("train-")]
    heldout = [arrays[name] for name in sorted(arrays) if name.startswith("heldout-")]
    for name, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != n_mels or array.shape[1] == 0:
            raise FlowerAppError(f"{path}: {name} has shape {array.shape}, expected ({n_mels}, T)")
        if not np.isfinite(array).all():
            raise FlowerAppError(f"{path}: {name} has non-finite values")
    if not train or not heldout:
        raise FlowerAppError(f"{path} needs train-* and heldout-* arrays")
    return ClientData(
        train=tuple(speaker_variant(item, variant) for item in train),
        heldout=tuple(speaker_variant(item, variant) for item in heldout),
    )


def load_client_data(
    plan: ClientPlan, partition_id: int, node_config: Mapping[str, Any]
) -> ClientData:
    """This client's features, as the plan says (see the module docstring)."""
    if plan.data_source == "synthetic":
        return synthetic_client_data(
            partition_id,
            seed=plan.data_seed,
            utterances=plan.synthetic_utterances,
            frames=plan.synthetic_frames,
            n_mels=plan.codec.n_mels,
        )
    directory = node_config.get("data-dir", plan.data_dir)
    if not isinstance(directory, str) or not directory:
        raise FlowerAppError("node_config data-dir must be a non-empty string")
    return load_prepared_client_data(Path(directory), partition_id, plan.codec.n_mels)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def state_to_arrays(state: Mapping[str, npt.NDArray[np.floating]]) -> ArrayRecord:
    """A model state as an ArrayRecord (float32, names sorted)."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(state[name], dtype=np.float32)) for name in sorted(state)}
    )


def arrays_to_state(record: ArrayRecord) -> dict[str, npt.NDArray[Any]]:
    """An ArrayRecord as numpy arrays; undecodable data is a :class:`FlowerAppError`."""
    try:
        return {name: np.asarray(array.numpy()) for name, array in record.items()}
    except (TypeError, ValueError, OSError, EOFError) as error:
        raise FlowerAppError(f"undecodable array in the record: {error}") from error


@functools.lru_cache(maxsize=8)
def _shapes(codec: CodecConfig) -> dict[str, tuple[int, ...]]:
    # Building a model to read its shapes costs milliseconds; a client checks several states
    # per message, for hundreds of messages, always with the same config.
    return expected_shapes(codec)


def _checked_state(state: Mapping[str, npt.NDArray[Any]], codec: CodecConfig, what: str) -> State:
    shapes = _shapes(codec)
    if set(state) != set(shapes):
        raise FlowerAppError(f"{what} does not hold the tensors of {codec.architecture_id}")
    checked: State = {}
    for name, shape in shapes.items():
        array = np.asarray(state[name])
        if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
            raise FlowerAppError(f"{what}: tensor {name} is {array.dtype}{array.shape}")
        if not np.isfinite(array).all():
            raise FlowerAppError(f"{what}: tensor {name} has non-finite values")
        checked[name] = array.astype(np.float32, copy=False)
    return checked


def _record(content: RecordDict, key: str, kind: type[Any], what: str) -> Any:
    try:
        value = content[key]
    except KeyError:
        raise FlowerAppError(f"{what} has no {key!r} record") from None
    if not isinstance(value, kind):
        raise FlowerAppError(f"{what}: {key!r} is a {type(value).__name__}, not {kind.__name__}")
    return value


def _plan_of(message: Message) -> ClientPlan:
    config = _record(message.content, CONFIG_KEY, ConfigRecord, "message")
    text = config.get(PLAN_KEY)
    if not isinstance(text, str):
        raise FlowerAppError("message config has no client plan")
    return ClientPlan.from_json(text)


def _partition_id(context: Context) -> int:
    value = context.node_config.get("partition-id")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FlowerAppError(
            f"node_config partition-id must be an int >= 0, got {value!r} "
            "(start the SuperNode with --node-config 'partition-id=N num-partitions=M')"
        )
    return value


def _server_round(message: Message) -> int:
    config = _record(message.content, CONFIG_KEY, ConfigRecord, "message")
    value = config.get("server-round")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FlowerAppError(f"message config server-round must be an int >= 1, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# ClientApp
# --------------------------------------------------------------------------------------------


def _stored_state(context: Context, key: str, codec: CodecConfig) -> State | None:
    if key not in context.state:
        return None
    record = context.state[key]
    if not isinstance(record, ArrayRecord):
        raise FlowerAppError(f"client state {key!r} is not an ArrayRecord")
    return _checked_state(arrays_to_state(record), codec, f"client state {key!r}")


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    # Evaluation runs outside train_codec (which sets its own): tiny convolutions on a busy
    # machine are several times slower with more than one intra-op thread.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=4)
def _reusable_model(codec: CodecConfig) -> CodecModel:
    # Building a CodecModel (seeded init of every tensor) costs more than a few training steps
    # of the small codecs used for hundreds of clients, and every use here loads a full state
    # over it anyway. A ClientApp handles one message at a time (one Ray actor task, or one
    # clientapp process), so one model per process and codec is never used twice at once.
    return new_model(codec)


def _model_with(codec: CodecConfig, state: State) -> CodecModel:
    model = _reusable_model(codec)
    load_numpy_state(model, state)
    model.eval()
    return model


def _train(codec: CodecConfig, start: State, data: ClientData, config: TrainConfig) -> State:
    model = _model_with(codec, start)
    train_codec(model, data.train, config)
    return state_to_numpy(model)


def client_train_config(plan: ClientPlan, round_number: int, partition_id: int) -> TrainConfig:
    """The plan's training settings with this client's seed for this round.

    A different stream per round and per client, the same for a client's two tracks (as in
    :mod:`simulations.codec_eval`), so personal and local-only differ only by the aggregation.
    """
    seed = (plan.train.seed + 1_000_003 * round_number + 7_919 * partition_id) % 2**63
    return dataclasses.replace(plan.train, seed=seed)


def train_client(message: Message, context: Context) -> Message:
    """One client's training round (module docstring: "Client, train")."""
    plan = _plan_of(message)
    partition_id = _partition_id(context)
    round_number = _server_round(message)
    arrays = _record(message.content, ARRAYS_KEY, ArrayRecord, "train message")
    global_state = _checked_state(arrays_to_state(arrays), plan.codec, "global model")
    data = load_client_data(plan, partition_id, context.node_config)
    train_config = client_train_config(plan, round_number, partition_id)

    local = _stored_state(context, LOCAL_MODEL_KEY, plan.codec)
    start = global_state if local is None else personalize(local, global_state, plan.alpha)
    new_local = _train(plan.codec, start, data, train_config)
    context.state[LOCAL_MODEL_KEY] = state_to_arrays(new_local)
    if plan.track_local_only:
        local_only = _stored_state(context, LOCAL_ONLY_MODEL_KEY, plan.codec)
        start = global_state if local_only is None else local_only
        context.state[LOCAL_ONLY_MODEL_KEY] = state_to_arrays(
            _train(plan.codec, start, data, train_config)
        )
    content = RecordDict(
        {
            ARRAYS_KEY: state_to_arrays(new_local),
            METRICS_KEY: MetricRecord(
                {"num-examples": data.train_frames, "partition-id": partition_id}
            ),
            META_KEY: ConfigRecord({"architecture-id": plan.codec.architecture_id}),
        }
    )
    return Message(content, reply_to=message)


def evaluate_client(message: Message, context: Context) -> Message:
    """Held-out L1 of the local-only, global and personal models (module docstring)."""
    plan = _plan_of(message)
    partition_id = _partition_id(context)
    arrays = _record(message.content, ARRAYS_KEY, ArrayRecord, "evaluate message")
    global_state = _checked_state(arrays_to_state(arrays), plan.codec, "global model")
    data = load_client_data(plan, partition_id, context.node_config)
    local = _stored_state(context, LOCAL_MODEL_KEY, plan.codec)
    if local is None:
        raise FlowerAppError("evaluate before any training round: no local model yet")
    models = {
        "global-loss": global_state,
        "personal-loss": personalize(local, global_state, plan.alpha),
    }
    local_only = _stored_state(context, LOCAL_ONLY_MODEL_KEY, plan.codec)
    if local_only is not None:
        models["local-only-loss"] = local_only
    metrics: dict[str, MetricValue] = {
        "num-examples": sum(item.shape[1] for item in data.heldout),
        "partition-id": partition_id,
    }
    with _torch_threads(plan.train.threads):
        for key, state in models.items():
            metrics[key] = evaluate_l1(_model_with(plan.codec, state), data.heldout)
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=message)


client_app = ClientApp()
client_app.train()(train_client)
client_app.evaluate()(evaluate_client)


# --------------------------------------------------------------------------------------------
# Strategy and ServerApp
# --------------------------------------------------------------------------------------------


class AggregationObserver(Protocol):
    """Sees every server aggregation (in-process runs only: tests and diagnostics)."""

    def on_aggregate(
        self,
        round_number: int,
        reference: PeerUpdate,
        clients: Sequence[PeerUpdate],
        result: AggregationResult,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class TrainRoundReport:
    round: int
    sampled: int
    replies: int
    failures: tuple[str, ...]
    participants: int
    rejected: tuple[str, ...]
    clipped: int
    statistic: str
    global_update_norm: float
    global_update_clipped: bool
    sample_count: int


@dataclass(frozen=True, slots=True)
class EvaluateRoundReport:
    round: int
    sampled: int
    replies: int
    failures: tuple[str, ...]
    #: Unweighted means over the clients that replied, keyed like the clients' metrics.
    mean_losses: dict[str, float]


@dataclass(frozen=True, slots=True)
class FlowerRunSummary:
    train: tuple[TrainRoundReport, ...]
    evaluate: tuple[EvaluateRoundReport, ...]
    wall_s: float

    def to_json_dict(self) -> dict[str, Any]:
        evaluations = {report.round: report for report in self.evaluate}
        rounds: list[dict[str, Any]] = []
        for report in self.train:
            entry: dict[str, Any] = dataclasses.asdict(report)
            entry["failures"] = list(report.failures)
            entry["rejected"] = list(report.rejected)
            evaluation = evaluations.get(report.round)
            if evaluation is not None:
                entry["evaluate_replies"] = evaluation.replies
                entry["evaluate_failures"] = list(evaluation.failures)
                for key, value in evaluation.mean_losses.items():
                    entry[key.replace("-", "_")] = value
            rounds.append(entry)
        return {"rounds": rounds, "wall_s": self.wall_s}


def _reply_failures(replies: Sequence[Message]) -> list[str]:
    return [
        f"node {reply.metadata.src_node_id}: {reply.error.reason}"
        for reply in replies
        if reply.has_error()
    ]


def wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    """The connected node ids once at least ``count`` are there; :class:`FlowerRunError` after
    ``timeout_s`` (SuperNodes connect on their own schedule; a simulation has them at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= count:
            return node_ids
        if time.monotonic() >= deadline:
            raise FlowerRunError(
                f"only {len(node_ids)} of {count} nodes connected within {timeout_s:.0f} s"
            )
        time.sleep(NODE_POLL_INTERVAL_S)


class PersonalizedFedAvg(Strategy):
    """Personalized FedAvg with the node's aggregation (module docstring: "Server").

    Every connected node trains and evaluates every round. A round in which any sampled node
    fails or does not answer raises :class:`FlowerRunError`: Flower only logs lost clients, and
    a study that silently lost a client is not the study that was asked for.
    """

    def __init__(
        self, settings: ServerSettings, observer: AggregationObserver | None = None
    ) -> None:
        self._settings = settings
        self._observer = observer
        self._plan_json = settings.plan.to_json()
        # The reference is a participant but not a client's bundle: count only the clients
        # towards the robust statistic's threshold, as a node counts its own and its peers'.
        self._aggregation = dataclasses.replace(
            settings.aggregation,
            min_bundles_for_robust=settings.aggregation.min_bundles_for_robust + 1,
        )
        self._global: State = {}
        self._sampled: dict[tuple[str, int], int] = {}
        self.train_reports: list[TrainRoundReport] = []
        self.evaluate_reports: list[EvaluateRoundReport] = []

    def summary(self) -> None:
        settings = self._settings
        logger.info(
            "personalized FedAvg: %d rounds, %d nodes, alpha %.2f, %s",
            settings.rounds,
            settings.expected_nodes,
            settings.plan.alpha,
            settings.plan.codec.architecture_id,
        )

    def _messages(
        self, kind: str, server_round: int, arrays: ArrayRecord, grid: Grid
    ) -> list[Message]:
        node_ids = wait_for_nodes(
            grid, self._settings.expected_nodes, self._settings.node_wait_timeout_s
        )
        self._sampled[(kind, server_round)] = len(node_ids)
        config = ConfigRecord({PLAN_KEY: self._plan_json, "server-round": server_round})
        return [
            Message(
                RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config}),
                dst_node_id=node_id,
                message_type=kind,
                group_id=str(server_round),
            )
            for node_id in node_ids
        ]

    def _check_replies(self, kind: str, server_round: int, replies: list[Message]) -> list[str]:
        failures = _reply_failures(replies)
        sampled = self._sampled.get((kind, server_round), 0)
        answered = len(replies) - len(failures)
        if answered < sampled:
            detail = "; ".join(failures[:3]) or "no error replies: timed out"
            raise FlowerRunError(
                f"round {server_round} {kind}: {answered} of {sampled} clients replied ({detail})"
            )
        return failures

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = _checked_state(
            arrays_to_state(arrays), self._settings.plan.codec, "server's global model"
        )
        return self._messages(MessageType.TRAIN, server_round, arrays, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        received = list(replies)
        failures = self._check_replies(MessageType.TRAIN, server_round, received)
        codec = self._settings.plan.codec
        clients: list[PeerUpdate] = []
        unreadable: list[str] = []
        for reply in received:
            if reply.has_error():
                continue
            peer_id = f"node-{reply.metadata.src_node_id}"
            try:
                clients.append(_client_update(reply, peer_id))
            except FlowerAppError as error:
                unreadable.append(f"{peer_id}: {error}")
        reference = PeerUpdate(
            peer_id=REFERENCE_PEER_ID,
            architecture_id=codec.architecture_id,
            sample_count=REFERENCE_SAMPLE_COUNT,
            state=self._global,
        )
        result = aggregate_round(reference, clients, self._aggregation, round_number=server_round)
        if self._observer is not None:
            self._observer.on_aggregate(server_round, reference, clients, result)
        record = result.record
        report = TrainRoundReport(
            round=server_round,
            sampled=self._sampled.get((MessageType.TRAIN, server_round), 0),
            replies=len(received) - len(failures),
            failures=tuple(failures),
            participants=len(record.participants),
            rejected=(
                *unreadable,
                *(f"{item.peer_id}: {item.reason}" for item in record.rejected),
            ),
            clipped=sum(1 for item in record.participants if item.clipped),
            statistic=record.statistic,
            global_update_norm=record.global_update_norm,
            global_update_clipped=record.global_update_clipped,
            sample_count=sum(item.sample_count for item in record.participants),
        )
        self.train_reports.append(report)
        metrics = MetricRecord(
            {
                "participants": report.participants,
                "rejected": len(report.rejected),
                "clipped": report.clipped,
                "global-update-norm": report.global_update_norm,
            }
        )
        return state_to_arrays(result.global_state), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(MessageType.EVALUATE, server_round, arrays, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        received = list(replies)
        failures = self._check_replies(MessageType.EVALUATE, server_round, received)
        values: dict[str, list[float]] = {}
        for reply in received:
            if reply.has_error():
                continue
            metrics = reply.content.metric_records.get(METRICS_KEY)
            if metrics is None:
                continue
            for key, value in metrics.items():
                if key.endswith("-loss") and isinstance(value, int | float):
                    values.setdefault(key, []).append(float(value))
        mean_losses = {key: float(np.mean(items)) for key, items in sorted(values.items())}
        self.evaluate_reports.append(
            EvaluateRoundReport(
                round=server_round,
                sampled=self._sampled.get((MessageType.EVALUATE, server_round), 0),
                replies=len(received) - len(failures),
                failures=tuple(failures),
                mean_losses=mean_losses,
            )
        )
        means: dict[str, MetricValue] = dict(mean_losses)
        return MetricRecord(means)


def _client_update(reply: Message, peer_id: str) -> PeerUpdate:
    """A client's reply as the node's aggregation sees a peer's bundle (validated there)."""
    content = reply.content
    arrays = _record(content, ARRAYS_KEY, ArrayRecord, f"reply of {peer_id}")
    metrics = _record(content, METRICS_KEY, MetricRecord, f"reply of {peer_id}")
    meta = _record(content, META_KEY, ConfigRecord, f"reply of {peer_id}")
    architecture_id = meta.get("architecture-id")
    if not isinstance(architecture_id, str):
        raise FlowerAppError("reply has no architecture id")
    partition_id = metrics.get("partition-id")
    if isinstance(partition_id, int) and not isinstance(partition_id, bool):
        # Names the client's data in the round record; the node id keeps the id unique.
        peer_id = f"{peer_id}/partition-{partition_id}"
    sample_count = metrics.get("num-examples")
    if not isinstance(sample_count, int) or isinstance(sample_count, bool):
        raise FlowerAppError(f"reply num-examples must be an int, got {sample_count!r}")
    return PeerUpdate(
        peer_id=peer_id,
        architecture_id=architecture_id,
        sample_count=sample_count,
        state=arrays_to_state(arrays),
    )


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def run_server(
    grid: Grid, settings: ServerSettings, observer: AggregationObserver | None = None
) -> FlowerRunSummary:
    """The ServerApp's work: all rounds, then the completeness check and the JSON summary.

    Raises :class:`FlowerRunError` if a round lost a client or fewer rounds completed than
    asked; with ``settings.result_path`` set, the summary (or the error) is written there.
    """
    started = time.monotonic()
    strategy = PersonalizedFedAvg(settings, observer)
    result_path = Path(settings.result_path) if settings.result_path else None
    try:
        initial = state_to_numpy(new_model(settings.plan.codec))
        strategy.start(
            grid=grid,
            initial_arrays=state_to_arrays(initial),
            num_rounds=settings.rounds,
            timeout=settings.round_timeout_s,
        )
        summary = FlowerRunSummary(
            train=tuple(strategy.train_reports),
            evaluate=tuple(strategy.evaluate_reports),
            wall_s=time.monotonic() - started,
        )
        check_summary(summary, settings)
    except Exception as error:
        if result_path is not None:
            _write_json_atomically(result_path, {"error": f"{type(error).__name__}: {error}"})
        raise
    if result_path is not None:
        _write_json_atomically(result_path, summary.to_json_dict())
    return summary


def check_summary(summary: FlowerRunSummary, settings: ServerSettings) -> None:
    """:class:`FlowerRunError` unless every round trained and evaluated with every node."""
    if len(summary.train) != settings.rounds or len(summary.evaluate) != settings.rounds:
        raise FlowerRunError(
            f"{len(summary.train)} training and {len(summary.evaluate)} evaluation rounds "
            f"completed, {settings.rounds} asked"
        )
    counts = [(r.round, r.replies, r.failures) for r in summary.train]
    counts += [(r.round, r.replies, r.failures) for r in summary.evaluate]
    for round_number, replies, failures in counts:
        if replies < settings.expected_nodes or failures:
            raise FlowerRunError(
                f"round {round_number}: {replies} of {settings.expected_nodes} clients "
                f"replied ({'; '.join(failures) or 'no errors reported'})"
            )


def make_server_app(
    settings: ServerSettings | None = None, observer: AggregationObserver | None = None
) -> ServerApp:
    """A ServerApp running :func:`run_server`; without ``settings`` it reads the run config."""
    app = ServerApp()

    def main(grid: Grid, context: Context) -> None:
        resolved = settings or ServerSettings.from_run_config(context.run_config)
        run_server(grid, resolved, observer)

    app.main()(main)
    return app


#: For ``flwr run`` (``fl.flower_app:server_app``): settings come from the run config.
server_app = make_server_app()
