"""What a Flower run reports: per-round records, the run summary, its check and its JSON file."""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl.flower.settings import FlowerRunError, ServerSettings


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


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
