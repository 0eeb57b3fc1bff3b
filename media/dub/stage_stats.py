"""Per-stage latency statistics of a dub (as ``media.latency`` does for calls).

Each stage records wall-clock milliseconds (what a user waits) and, for stages timed with
:meth:`StageStats.timed`, the CPU milliseconds of the calling thread (what the stage costs one
core, unaffected by other processes competing for the machine).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StageStats"]


@dataclass(slots=True)
class StageStats:
    """Milliseconds per call of each named stage."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu_samples: dict[str, list[float]] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(stage, (time.perf_counter() - start) * 1000)
            self.cpu_samples.setdefault(stage, []).append((time.thread_time() - cpu_start) * 1000)

    def cpu_p50(self, stage: str) -> float | None:
        values = self.cpu_samples.get(stage)
        return float(np.percentile(values, 50)) if values else None

    def add(self, stage: str, milliseconds: float) -> None:
        self.samples.setdefault(stage, []).append(milliseconds)

    def p50(self, stage: str) -> float | None:
        values = self.samples.get(stage)
        return float(np.percentile(values, 50)) if values else None

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {count, p50_ms, p95_ms, total_s[, cpu_p50_ms]}}`` for every stage seen."""
        result: dict[str, dict[str, float]] = {}
        for stage, values in self.samples.items():
            array = np.asarray(values)
            result[stage] = {
                "count": float(array.size),
                "p50_ms": round(float(np.percentile(array, 50)), 3),
                "p95_ms": round(float(np.percentile(array, 95)), 3),
                "total_s": round(float(array.sum()) / 1000, 3),
            }
            cpu = self.cpu_p50(stage)
            if cpu is not None:
                result[stage]["cpu_p50_ms"] = round(cpu, 3)
        return result
