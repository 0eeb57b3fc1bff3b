"""Personalized FedAvg as a Flower Strategy: the server half of the node's round."""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl.aggregate import AggregationResult, PeerUpdate, aggregate_round
from fl.flower.records import (
    ARRAYS_KEY,
    CONFIG_KEY,
    META_KEY,
    METRICS_KEY,
    PLAN_KEY,
    MetricValue,
    State,
    arrays_to_state,
    checked_state,
    record,
    state_to_arrays,
)
from fl.flower.results import EvaluateRoundReport, TrainRoundReport
from fl.flower.settings import FlowerAppError, FlowerRunError, ServerSettings

#: The previous global model takes part in the server's aggregation with this weight.
REFERENCE_SAMPLE_COUNT: Final = 1
REFERENCE_PEER_ID: Final = "server"
#: How often the server looks for SuperNodes that have not connected yet.
NODE_POLL_INTERVAL_S: Final = 0.2
PREPARED_INDEX_FILE: Final = "speakers.json"

logger = logging.getLogger(__name__)


class AggregationObserver(Protocol):
    """Sees every server aggregation (in-process runs only: tests and diagnostics)."""

    def on_aggregate(
        self,
        round_number: int,
        reference: PeerUpdate,
        clients: Sequence[PeerUpdate],
        result: AggregationResult,
    ) -> None: ...


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
        self._global = checked_state(
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
    arrays = record(content, ARRAYS_KEY, ArrayRecord, f"reply of {peer_id}")
    metrics = record(content, METRICS_KEY, MetricRecord, f"reply of {peer_id}")
    meta = record(content, META_KEY, ConfigRecord, f"reply of {peer_id}")
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
