"""Frozen, validated settings of codec training and of federated aggregation.

Every field is checked at construction and a bad value raises :class:`ValueError` naming the
field, so a config that exists is a config that works (STYLE.md §10). The codec's own settings
(:class:`codec.config.CodecConfig`) live with the codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from codec.config import MAX_SAMPLE_COUNT, check_float, check_int

RobustStatistic = Literal["trimmed_mean", "median", "none"]
QuantizationMode = Literal["ste", "noise"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Local training of the codec (see :func:`fl.train.train_codec`)."""

    steps: int = 300
    learning_rate: float = 3e-3
    batch_size: int = 16
    crop_frames: int = 128
    seed: int = 0
    threads: int = 1
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0
    quantization: QuantizationMode = "ste"

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 0, 10_000_000)
        check_float("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_int("batch_size", self.batch_size, 1, 4096)
        check_int("crop_frames", self.crop_frames, 1, 100_000)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("threads", self.threads, 1, 256)
        check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        check_float("grad_clip_norm", self.grad_clip_norm, 0.0, 1e6, low_open=True)
        if self.quantization not in ("ste", "noise"):
            raise ValueError(f"quantization must be 'ste' or 'noise', got {self.quantization!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationConfig:
    """Personalized FedAvg with clipping and robust statistics (see :mod:`fl.aggregate`).

    ``clip_norm_ratio`` bounds each peer's update ``w_k - local`` to
    ``clip_norm_ratio * ||local||``. Default 1.0: two default codecs trained from the shared
    init on different espeak-ng voices (800 steps each) end up 0.53 ``||w||`` apart, so honest
    peers pass unclipped with about 2x headroom, while one poisoned bundle can move the
    personalized model by at most ``(1 - alpha) * 1.0 = 30 %`` of its norm in a round (and, with
    ``min_bundles_for_robust`` participants, the robust statistic discards it outright).
    Lower it where peers are known to be alike.
    """

    alpha: float = 0.7
    clip_norm_ratio: float = 1.0
    robust: RobustStatistic = "trimmed_mean"
    trim_fraction: float = 0.2
    min_bundles_for_robust: int = 5
    #: A self-reported sample count over this is refused (see :data:`MAX_SAMPLE_COUNT`).
    max_sample_count: int = MAX_SAMPLE_COUNT

    def __post_init__(self) -> None:
        check_float("alpha", self.alpha, 0.0, 1.0)
        check_float("clip_norm_ratio", self.clip_norm_ratio, 0.0, 1e6, low_open=True)
        if self.robust not in ("trimmed_mean", "median", "none"):
            raise ValueError(
                f"robust must be 'trimmed_mean', 'median' or 'none', got {self.robust!r}"
            )
        check_float("trim_fraction", self.trim_fraction, 0.0, 0.49)
        check_int("min_bundles_for_robust", self.min_bundles_for_robust, 1, 1_000_000)
        check_int("max_sample_count", self.max_sample_count, 1, 2**63 - 1)
