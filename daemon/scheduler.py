"""The FL round scheduler: when to run a round, and the round's steps in order.

A round (docs/design.md, "Federated learning"):

1. reload our checkpoint; train locally if new audio was enrolled since it was trained;
2. exchange bundles, through handshakes, with every reachable trusted peer (and take the
   bundles trusted peers brought us in their own handshakes since the last round);
3. aggregate (:func:`fl.aggregate.aggregate_round`), clipping against the shared starting
   codec's norm, and form our personal model from our model and the round's global one by the
   node's personalization method (``fl.personalization``;
   :func:`fl.personalize.round_personal`, the code the study and the Flower app run; ``auto``
   picks the method by how much training audio we have, :func:`fl.personalize.node_method`);
   keep it only if our held-out loss did not regress beyond ``max_loss_increase``
   (:mod:`fl.round_guard`; otherwise the round is recorded with ``discarded`` and our model
   stays as it was);
4. checkpoint atomically;
5. record the round.

Rounds never overlap. Any failure before the checkpoint is written (a full disk while writing
it included) leaves the previous checkpoint in place and records the round as failed with the
reason (``disk full: ...`` first when that is the cause); a round is never left "running" while
the node runs. The heavy steps (training, aggregation, loss evaluation) and the database work
run in worker threads, off the event loop. One failed round never ends the scheduler loop: an
unexpected error is counted in the node's faults (``status``) and the next round runs on time.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import trio

from codec.checkpoint import Checkpoint
from codec.errors import InvalidBundleError
from codec.model import new_model, state_to_numpy
from daemon.codec_store import FEATURES_DIGEST_KEY, CodecStore, OurCodec, State
from daemon.connections import ConnectionManager, DialError
from daemon.database import DatabaseError, PeerRecord, RoundRecord, RoundStatus, RoundStore
from daemon.faults import FaultLog, describe_failure
from daemon.logs import event, get_logger
from daemon.peers import PeerTable, format_peer_id, short_peer_id
from fl.aggregate import AggregationResult, PeerUpdate
from fl.config import AggregationConfig, TrainConfig
from fl.personalize import (
    AUTO,
    DITTO_LAMBDA,
    FINE_TUNE_ROUNDS,
    Personal,
    node_method,
    round_personal,
)
from fl.round_guard import DEFAULT_MAX_LOSS_INCREASE, guarded_aggregate, split_heldout
from fl.train import evaluate_l1, train_codec
from media.features import FRAMES_PER_SECOND
from schemas.messages import WeightsBundle

log = get_logger("rounds")

#: Peers we exchange with at once during a round.
MAX_PARALLEL_EXCHANGES: Final = 8
#: Bundles trusted peers brought us between rounds; one per peer (the latest) is kept.
MAX_INBOX: Final = 256
#: Attempts at recording a failed round (the database may be locked by another process).
FINISH_ATTEMPTS: Final = 3
FINISH_RETRY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class RoundSettings:
    interval_s: float
    aggregation: AggregationConfig
    train: TrainConfig
    #: Train on our own audio in every round (APFL-style), not only after new enrollments.
    #: Off for users (their audio does not change between rounds); on in FL studies.
    train_each_round: bool = False
    #: A round whose result worsens our held-out loss by more than this fraction is discarded.
    max_loss_increase: float = DEFAULT_MAX_LOSS_INCREASE
    #: ``fl.personalization``: a :class:`fl.personalize.Method` value, or ``auto``.
    personalization: str = AUTO


class RoundInProgressError(Exception):
    """A round was asked for while one is running."""


@dataclass(frozen=True, slots=True)
class ValidatedBundle:
    """A peer's bundle and its weights, validated once when it arrived (and never again)."""

    bundle: WeightsBundle
    state: State


class RoundScheduler:
    def __init__(
        self,
        *,
        codecs: CodecStore,
        connections: ConnectionManager,
        peers: PeerTable,
        rounds: RoundStore,
        settings: RoundSettings,
        our_peer_id: str,
        on_aggregated: Callable[[int, AggregationResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultLog | None = None,
    ) -> None:
        self._faults = faults if faults is not None else FaultLog()
        self._codecs = codecs
        self._connections = connections
        self._peers = peers
        self._rounds = rounds
        self._settings = settings
        #: Settings from a config reload, adopted when no round is running (see update_settings).
        self._next_settings: RoundSettings | None = None
        self._round_wanted = False
        self._our_peer_id = our_peer_id
        self._on_aggregated = on_aggregated
        self._clock = clock
        self._inbox: dict[bytes, ValidatedBundle] = {}
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self.current_round: int | None = None

    # -- inputs ------------------------------------------------------------------------------

    def receive_bundle(self, public_key: bytes, bundle: WeightsBundle) -> InvalidBundleError | None:
        """A trusted peer's bundle from its handshake: kept as its decoder, used next round.

        Returns why it was refused (the connection manager counts its typed problem as
        ``invalid_bundle:<code>`` in the status), or None when it was kept.
        """
        accepted = self._validate(public_key, bundle)
        if isinstance(accepted, InvalidBundleError):
            return accepted
        if public_key in self._inbox or len(self._inbox) < MAX_INBOX:
            self._inbox[public_key] = accepted
        return None

    def _validate(
        self, public_key: bytes, bundle: WeightsBundle
    ) -> ValidatedBundle | InvalidBundleError:
        """The one validation a bundle gets; a valid one is kept as that peer's decoder."""
        try:
            state = self._codecs.validated_state(bundle, self._codecs.current().config)
        except InvalidBundleError as error:
            event(
                log,
                logging.INFO,
                "bundle.rejected",
                peer=short_peer_id(public_key),
                reason=str(error),
            )
            return error
        self._codecs.keep_peer_decoder(public_key, bundle)
        return ValidatedBundle(bundle, state)

    def request_round(self) -> None:
        """Ask the scheduler loop for a round now (the ``round.start`` RPC)."""
        self._round_wanted = True
        self._wake.set()

    @property
    def settings(self) -> RoundSettings:
        """The settings in force (or about to be, after a reload)."""
        return self._next_settings or self._settings

    def update_settings(self, settings: RoundSettings) -> None:
        """New settings from a config reload. A running round finishes with the settings it
        started with; the schedule restarts from now on the new interval."""
        self._next_settings = settings
        self._wake.set()

    def _adopt_next_settings(self) -> None:
        if self._next_settings is not None and not self._lock.locked():
            self._settings, self._next_settings = self._next_settings, None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run rounds on the schedule and on request, until cancelled."""
        while True:
            self._adopt_next_settings()
            interval = self.settings.interval_s
            with trio.move_on_after(interval if interval > 0 else math.inf) as timer:
                await self._wake.wait()
            self._wake = trio.Event()
            if not timer.cancelled_caught and not self._round_wanted:
                continue  # woken by new settings only: wait again on their interval
            self._round_wanted = False
            try:
                await self.run_round()
            except RoundInProgressError:
                pass
            except Exception as error:
                self._faults.record("round", error)

    async def run_round(self) -> RoundRecord:
        if self._lock.locked():
            raise RoundInProgressError("a round is already running")
        async with self._lock:
            return await self._run_round_locked()

    async def _run_round_locked(self) -> RoundRecord:
        if self._next_settings is not None:
            self._settings, self._next_settings = self._next_settings, None
        trusted = await trio.to_thread.run_sync(self._trusted_present)
        record = await trio.to_thread.run_sync(
            functools.partial(
                self._rounds.begin,
                alpha=self._settings.aggregation.alpha,
                peers=[format_peer_id(peer.public_key) for peer in trusted],
            )
        )
        number = record.round_number
        self.current_round = number
        started = self._clock()
        bytes_before = self._connections.stats.bytes_sent + self._connections.stats.bytes_received
        event(log, logging.INFO, "round.start", round=number, trusted_peers=len(trusted))
        try:
            ours = await self._train_if_new_audio()
            bundles, invalid, failures = await self._collect_bundles(trusted)
            result = await trio.to_thread.run_sync(self._aggregate, ours, bundles, invalid, number)
            checkpoint, loss_before, loss_after, aggregation = result
            await trio.to_thread.run_sync(self._codecs.save, checkpoint)
        except BaseException as error:
            reason = (
                "cancelled (node shutting down)"
                if isinstance(error, trio.Cancelled)
                else describe_failure(error)
            )
            try:
                with trio.CancelScope(shield=True):
                    finished = await self._record_failure(number, reason)
            finally:
                self.current_round = None
            event(log, logging.WARNING, "round.failed", round=number, reason=reason)
            if isinstance(error, Exception):
                return finished
            raise
        exchanged = [*bundles, *invalid]
        for key in exchanged:
            self._inbox.pop(key, None)
        seconds = self._clock() - started
        moved = self._connections.stats.bytes_sent + self._connections.stats.bytes_received
        report = {
            **aggregation,
            "unreachable": failures,
            "wall_s": seconds,
            "bytes_exchanged": moved - bytes_before,
            "model_version": checkpoint_version(self._codecs.current()),
        }
        try:
            finished = await trio.to_thread.run_sync(
                functools.partial(
                    self._rounds.finish,
                    number,
                    status=RoundStatus.COMPLETED,
                    peers=[format_peer_id(key) for key in exchanged],
                    n=int(aggregation["total_sample_count"]),  # type: ignore[call-overload]
                    loss_before=loss_before,
                    loss_after=loss_after,
                    record=report,
                )
            )
        except DatabaseError as error:
            # The checkpoint is written; only its record failed: say so rather than "running".
            with trio.CancelScope(shield=True):
                finished = await self._record_failure(
                    number, f"model saved, round record not written: {describe_failure(error)}"
                )
            self.current_round = None
            return finished
        self.current_round = None
        event(
            log,
            logging.INFO,
            "round.done",
            round=number,
            peers=len(exchanged),
            seconds=round(seconds, 3),
            loss_before=loss_before,
            loss_after=loss_after,
        )
        return finished

    def _trusted_present(self) -> list[PeerRecord]:
        return [peer for peer in self._peers.present() if self._peers.is_trusted(peer.public_key)]

    async def _record_failure(self, number: int, reason: str) -> RoundRecord:
        """Record round ``number`` as failed, retrying while the database is locked."""
        finish = functools.partial(
            self._rounds.finish,
            number,
            status=RoundStatus.FAILED,
            peers=[],
            n=None,
            loss_before=None,
            loss_after=None,
            record={"error": reason},
        )
        for attempt in range(FINISH_ATTEMPTS):
            try:
                return await trio.to_thread.run_sync(finish)
            except DatabaseError:
                if attempt == FINISH_ATTEMPTS - 1:
                    raise  # left "running": marked abandoned at the next start
                await trio.sleep(FINISH_RETRY_S)
        raise AssertionError("unreachable")

    async def _train_if_new_audio(self) -> OurCodec:
        ours = self._codecs.current()
        digest = self._codecs.features_digest()
        trained_on = ours.checkpoint.metadata.get(FEATURES_DIGEST_KEY)
        if not digest or (trained_on == digest and not self._settings.train_each_round):
            return ours
        checkpoint = await trio.to_thread.run_sync(self._train, ours, digest)
        return await trio.to_thread.run_sync(self._codecs.save, checkpoint)

    def _train(self, ours: OurCodec, digest: str) -> Checkpoint:
        features, _heldout = split_heldout(self._codecs.load_features())
        model = new_model(ours.config, ours.checkpoint.state)
        train_codec(model, features, self._settings.train)
        return Checkpoint(
            codec_config=ours.config,
            state=state_to_numpy(model),
            round=ours.checkpoint.round,
            sample_count=sum(item.shape[1] for item in features),
            metadata={
                **ours.checkpoint.metadata,
                FEATURES_DIGEST_KEY: digest,
                "source": "round-training",
            },
        )

    async def _collect_bundles(
        self, trusted: list[PeerRecord]
    ) -> tuple[dict[bytes, ValidatedBundle], dict[bytes, InvalidBundleError], dict[str, str]]:
        """The inbox and a fresh exchange with every trusted peer present: the valid bundles,
        the refused ones (recorded in the round), and the peers we could not reach."""
        bundles: dict[bytes, ValidatedBundle] = dict(self._inbox)
        invalid: dict[bytes, InvalidBundleError] = {}
        failures: dict[str, str] = {}
        slots = trio.CapacityLimiter(MAX_PARALLEL_EXCHANGES)

        async def exchange(peer: PeerRecord) -> None:
            async with slots:
                try:
                    bundle = await self._connections.exchange_bundles(peer)
                except DialError as error:
                    failures[format_peer_id(peer.public_key)] = str(error)
                    return
            if bundle is None:
                failures[format_peer_id(peer.public_key)] = "sent no bundle (does not trust us)"
                return
            accepted = self._validate(peer.public_key, bundle)
            if isinstance(accepted, InvalidBundleError):
                bundles.pop(peer.public_key, None)
                invalid[peer.public_key] = accepted
            else:
                bundles[peer.public_key] = accepted

        async with trio.open_nursery() as nursery:
            for peer in trusted:
                nursery.start_soon(exchange, peer)
        return bundles, invalid, failures

    def _aggregate(
        self,
        ours: OurCodec,
        bundles: dict[bytes, ValidatedBundle],
        invalid: dict[bytes, InvalidBundleError],
        number: int,
    ) -> tuple[Checkpoint, float | None, float | None, dict[str, object]]:
        config = ours.config
        local = PeerUpdate(
            peer_id=self._our_peer_id,
            architecture_id=config.architecture_id,
            sample_count=max(1, ours.checkpoint.sample_count),
            state=ours.checkpoint.state,
        )
        updates = [
            PeerUpdate(
                peer_id=format_peer_id(key),
                architecture_id=received.bundle.architecture_id,
                sample_count=received.bundle.sample_count,
                state=received.state,
            )
            for key, received in bundles.items()
        ]
        refused = [
            {"peer_id": format_peer_id(key), "reason": str(error)} for key, error in invalid.items()
        ]

        own, heldout = split_heldout(self._codecs.load_features())

        def heldout_loss(state: Mapping[str, npt.NDArray[np.floating]]) -> float:
            return evaluate_l1(new_model(config, state), heldout)

        personal = self._personalizer(ours, own)
        guarded = guarded_aggregate(
            local,
            updates,
            self._settings.aggregation,
            round_number=number,
            reference_norm=self._codecs.reference_norm(),
            heldout_loss=heldout_loss if heldout else None,
            max_increase=self._settings.max_loss_increase,
            personal=lambda candidate: personal(candidate).state,
        )
        result = guarded.result
        chosen = personal(result)
        loss_before, loss_after = guarded.loss_before, guarded.loss_after
        discarded = guarded.reason
        left_out = list(guarded.left_out)
        if discarded is not None:
            event(log, logging.WARNING, "round.discarded", round=number, reason=discarded)
        if self._on_aggregated is not None:
            self._on_aggregated(number, result)
        checkpoint = Checkpoint(
            codec_config=config,
            state=ours.checkpoint.state if discarded else chosen.state,
            round=number,
            sample_count=ours.checkpoint.sample_count,
            metadata={
                **ours.checkpoint.metadata,
                "source": "round",
                "alpha": chosen.alpha,
                "personalization": chosen.method.value,
            },
        )
        record = asdict(result.record)
        record["personalization"] = chosen.method.value
        record["personal_alpha"] = chosen.alpha
        record["rejected"] = [*record["rejected"], *refused]
        record["total_sample_count"] = result.record.total_sample_count
        record["discarded"] = discarded
        record["left_out_for_loss"] = left_out
        return checkpoint, loss_before, loss_after, record

    def _personalizer(
        self, ours: OurCodec, own: list[npt.NDArray[np.float32]]
    ) -> Callable[[AggregationResult], Personal]:
        """Our personal model from a candidate aggregation, by this round's method (computed
        once per candidate: the round guard scores it, the round keeps the same object)."""
        config = ours.config
        settings = self._settings
        method = node_method(
            settings.personalization, sum(item.shape[1] for item in own) / FRAMES_PER_SECOND
        )
        done: list[tuple[AggregationResult, Personal]] = []

        def loss(state: Mapping[str, npt.NDArray[np.floating]]) -> float:
            return evaluate_l1(new_model(config, state), own)

        def train(
            start: Mapping[str, npt.NDArray[np.floating]],
            anchor: Mapping[str, npt.NDArray[np.floating]] | None,
        ) -> State:
            model = new_model(config, start)
            steps = settings.train.steps * (FINE_TUNE_ROUNDS if anchor is None else 1)
            train_codec(
                model,
                own,
                dataclasses.replace(settings.train, steps=steps),
                anchor=anchor,
                proximal_weight=DITTO_LAMBDA if anchor is not None else 0.0,
            )
            return state_to_numpy(model)

        def personal(candidate: AggregationResult) -> Personal:
            for seen, kept in done:
                if seen is candidate:
                    return kept
            made = round_personal(
                method,
                trained=ours.checkpoint.state,
                global_state=candidate.global_state,
                alpha=settings.aggregation.alpha,
                loss=loss if own else None,
                train=train if own else None,
            )
            done.append((candidate, made))
            return made

        return personal


def checkpoint_version(codec: OurCodec) -> str:
    """The short form of a codec version shown to people (first 12 hex digits of its hash)."""
    return codec.version_hash.hex()[:12]
