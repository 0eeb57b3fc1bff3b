"""The Flower ServerApp: every round through the strategy, then the check and the summary."""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import time
from pathlib import Path

from flwr.app import (
    Context,
)
from flwr.serverapp import Grid, ServerApp

from codec.model import new_model, state_to_numpy
from fl.flower.records import state_to_arrays
from fl.flower.results import FlowerRunSummary, check_summary, write_json_atomically
from fl.flower.settings import ServerSettings
from fl.flower.strategy import AggregationObserver, PersonalizedFedAvg


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
            write_json_atomically(result_path, {"error": f"{type(error).__name__}: {error}"})
        raise
    if result_path is not None:
        write_json_atomically(result_path, summary.to_json_dict())
    return summary


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
