"""The Flower app's settings: the client plan every message carries, the server's run settings
and its run-config keys, and the app's errors."""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from codec.config import CodecConfig
from fl.config import AggregationConfig, TrainConfig
from fl.errors import FLError
from fl.personalize import METHODS, Method

FloatArray = npt.NDArray[np.float32]
DataSource = Literal["synthetic", "prepared"]


class FlowerAppError(FLError):
    """Bad settings, a bad run config, unusable client data or a malformed message."""


class FlowerRunError(FlowerAppError):
    """A Flower run went wrong: a client failed or went missing, or rounds did not complete."""


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
    #: How the client forms its personal model (:class:`fl.personalize.Method`).
    personalization: str = Method.MIX70.value
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
        if self.personalization not in {method.value for method in METHODS}:
            raise FlowerAppError(
                f"personalization must be one of {[m.value for m in METHODS]}, "
                f"got {self.personalization!r}"
            )
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
                "personalization": self.personalization,
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
            personalization=get("personalization", str, defaults.plan.personalization),
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
    "personalization",
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
