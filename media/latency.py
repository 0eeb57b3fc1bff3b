"""Per-stage latency of a call: samples in, percentiles out, JSON-ready.

One :class:`LatencyStats` holds a bounded list of samples per stage name (a call of hours must
not grow without bound: past :data:`MAX_SAMPLES_PER_STAGE` the oldest half is dropped, so the
percentiles describe the recent call). Percentiles use linear interpolation (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

import numpy as np

__all__ = ["MAX_SAMPLES_PER_STAGE", "LatencyStats", "percentile"]

MAX_SAMPLES_PER_STAGE: Final = 100_000


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values``, or ``None`` when there are none."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return None
    return float(np.percentile(array, q))


class LatencyStats:
    """Seconds per stage (``decode``, ``asr``, ...), summarised as count / p50 / p95 / max."""

    def __init__(self) -> None:
        self._samples: dict[str, list[float]] = {}

    def add(self, stage: str, seconds: float) -> None:
        if not math.isfinite(seconds):
            return  # a clock glitch must not poison a summary
        samples = self._samples.setdefault(stage, [])
        samples.append(float(seconds))
        if len(samples) > MAX_SAMPLES_PER_STAGE:
            del samples[: MAX_SAMPLES_PER_STAGE // 2]

    def samples(self, stage: str) -> list[float]:
        return list(self._samples.get(stage, ()))

    @property
    def stages(self) -> list[str]:
        return list(self._samples)

    def summary(self, stage: str) -> dict[str, float | int | None]:
        samples = self._samples.get(stage, [])
        return {
            "count": len(samples),
            "p50_s": percentile(samples, 50),
            "p95_s": percentile(samples, 95),
            "max_s": max(samples) if samples else None,
        }

    def as_dict(self, stages: Iterable[str] = ()) -> dict[str, dict[str, float | int | None]]:
        """Every stage seen, plus ``stages`` (reported with a count of 0 when never seen)."""
        names = list(dict.fromkeys([*stages, *self._samples]))
        return {name: self.summary(name) for name in names}


def format_seconds(value: object) -> str:
    """``0.123`` -> ``"123 ms"``, ``None`` -> ``"-"`` (for tables)."""
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value * 1000:.0f} ms"
    return "-"


def stage_summary(mapping: Mapping[str, object], stage: str) -> tuple[object, object]:
    """(p50, p95) of ``stage`` in a ``LatencyStats.as_dict()``-shaped mapping (or Nones)."""
    entry = mapping.get(stage)
    if isinstance(entry, Mapping):
        return entry.get("p50_s"), entry.get("p95_s")
    return None, None
