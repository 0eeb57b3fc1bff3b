"""``parley node``: the long-running node, wired from small collaborators.

This module only builds and connects the parts (STYLE.md 6): identity, database, peer table,
codec store, connection manager, round scheduler, discovery and the status RPC, each of which
is tested alone. :func:`open_node` runs them all in one nursery and yields a handle;
leaving the ``async with`` (or the ``shutdown`` RPC, or SIGINT/SIGTERM in :func:`run_node`)
shuts down in order: stop discovery (mDNS goodbye), send ``Bye`` on open sessions, let a
running round finish or fail cleanly, close the database.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from daemon.calls import CallService, make_call_handler
from daemon.codec_store import CodecStore
from daemon.config import Config
from daemon.connections import (
    ConnectionManager,
    SessionHandler,
    SessionInfo,
    connection_limits,
)
from daemon.database import (
    Database,
    JobStatus,
    JobStore,
    PeerStore,
    RoundRecord,
    RoundStatus,
    RoundStore,
    open_database,
)
from daemon.discovery import (
    DiscoveredPeer,
    local_interface_addresses,
    open_mdns_discovery,
    parse_static_peers,
)
from daemon.home import NodeHome
from daemon.identity import Identity, load_identity
from daemon.jobs import JobRunner, job_dict
from daemon.logs import event, get_logger
from daemon.peers import KeyChangedError, PeerTable, format_peer_id, sanitize_peer_name
from daemon.rpc import RpcHandlerError
from daemon.rpc_server import serve_rpc
from daemon.scheduler import RoundInProgressError, RoundScheduler, RoundSettings, checkpoint_version
from daemon.status_view import key_change_dicts, peer_rows
from daemon.trust_policy import TrustPolicy
from fl.aggregate import AggregationResult
from fl.config import AggregationConfig, CodecConfig, TrainConfig
from handshake.noise import StaticIdentity
from handshake.session import REASSEMBLY_BUDGET_BYTES, MemoryBudget, SessionSettings
from handshake.stream import SessionStream, StreamSettings
from schemas.messages import PROTOCOL_VERSION, Hello, WeightsBundle

log = get_logger("node")

#: How often the peer table drops peers that stopped announcing themselves.
EXPIRY_INTERVAL_S: Final = 10.0
CAPABILITIES: Final = ("fl/1", "call/1")

Handler = Callable[[Any], Awaitable[object]]


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeOptions:
    """Overrides for tests and simulations (the config file stays the user's)."""

    listen_port: int | None = None
    codec: CodecConfig = field(default_factory=CodecConfig)
    train: TrainConfig | None = None
    train_each_round: bool = False
    session_handler: SessionHandler | None = None
    #: FL studies only: see every round's aggregation (global and personal states).
    on_aggregated: Callable[[int, AggregationResult], None] | None = None
    #: FL studies only: what this node sends instead of its real bundle (a poisoning peer).
    outgoing_bundle: Callable[[WeightsBundle], WeightsBundle] | None = None


@dataclass(slots=True)
class RunningNode:
    """A handle on a running node: its collaborators, for the RPC, tests and simulations."""

    home: NodeHome
    config: Config
    identity: Identity
    database: Database
    peers: PeerTable
    codecs: CodecStore
    connections: ConnectionManager
    scheduler: RoundScheduler
    rounds: RoundStore
    jobs: JobStore
    name: str
    job_runner: JobRunner
    listen_port: int = 0
    call_service: CallService | None = None
    started_at: float = field(default_factory=time.time)
    shutdown_requested: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def hello(self) -> Hello:
        ours = self.codecs.current()
        return Hello(
            protocol_version=PROTOCOL_VERSION,
            capabilities=CAPABILITIES,
            codec_architecture=ours.config.architecture_id,
            codec_version_hash=ours.version_hash,
        )

    def observe(self, peer: DiscoveredPeer) -> None:
        if peer.public_key == self.identity.public_key:
            return
        try:
            self.peers.observe(
                peer.public_key, name=peer.name, address=(peer.host, peer.port), source=peer.source
            )
        except KeyChangedError as error:
            event(
                log, logging.WARNING, "peer.key_changed", name=error.event.name, reason=str(error)
            )

    # -- status RPC --------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        ours = self.codecs.current()
        last = self.rounds.recent(limit=1)
        known = self.peers.known()
        return {
            "node_id": self.peer_id,
            "name": self.name,
            "uptime_s": time.time() - self.started_at,
            "listen": f"{self.config.listen.host}:{self.listen_port}",
            "model_version": checkpoint_version(ours),
            "codec": {
                "architecture": ours.config.architecture_id,
                "kbps": ours.config.kbps,
                "round": ours.checkpoint.round,
            },
            "last_round": _round_dict(last[0]) if last else None,
            "round_running": self.scheduler.current_round,
            "counts": {
                "peers_known": len(known),
                "peers_present": len(self.peers.present()),
                "peers_trusted": sum(1 for peer in known if peer.trust.value == "trusted"),
                "sessions": len(self.connections.sessions),
                "rounds_completed": self.rounds.count(status=RoundStatus.COMPLETED),
                "jobs_pending": self.jobs.count(status=JobStatus.PENDING),
            },
            "connections": self.connections.stats.as_dict(),
            "limits": self.connections.limits(),
            "job_running": self.job_runner.progress,
            "calls": self.call_service.status() if self.call_service is not None else None,
            "key_changes": key_change_dicts(self.peers.pending_key_changes(limit=20)),
            "names_not_pinned": self.peers.names_not_pinned,
        }

    def rpc_handlers(self) -> dict[str, Handler]:
        async def status(params: Any) -> object:
            return self.status()

        async def peers(params: Any) -> object:
            present = {peer.public_key for peer in self.peers.present()}
            records = self.peers.known()
            rows = peer_rows(records, self.peers.pending_key_changes())
            return [
                {**row, "present": record.public_key in present}
                for row, record in zip(rows, records, strict=True)
            ]

        async def sessions(params: Any) -> object:
            return [info.as_dict() for info in self.connections.sessions.values()]

        async def rounds(params: Any) -> object:
            limit = _int_param(params, "limit", 20)
            return [_round_dict(record) for record in self.rounds.recent(limit=limit)]

        async def round_start(params: Any) -> object:
            if _param(params, "wait", False):
                try:
                    record = await self.scheduler.run_round()
                except RoundInProgressError as error:
                    raise RpcHandlerError("round_in_progress", str(error)) from None
                return _round_dict(record)
            if self.scheduler.running:
                raise RpcHandlerError("round_in_progress", "a round is already running")
            self.scheduler.request_round()
            return {"requested": True}

        async def jobs(params: Any) -> object:
            return [job_dict(job) for job in self.jobs.list(limit=_int_param(params, "limit", 100))]

        async def shutdown(params: Any) -> object:
            self.shutdown_requested.set()
            return {"shutting_down": True}

        return {
            "status": status,
            "peers": peers,
            "sessions": sessions,
            "rounds": rounds,
            "round.start": round_start,
            "jobs": jobs,
            "shutdown": shutdown,
        }


def _param(params: Any, name: str, default: object) -> object:
    if isinstance(params, Mapping):
        return params.get(name, default)
    return default


def _int_param(params: Any, name: str, default: int) -> int:
    value = _param(params, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise RpcHandlerError("invalid_params", f"{name} must be an integer 1..100000")
    return value


def _round_dict(record: RoundRecord) -> dict[str, object]:
    return {
        "round": record.round_number,
        "status": record.status.value,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "peers": list(record.peers),
        "n": record.n,
        "alpha": record.alpha,
        "loss_before": record.loss_before,
        "loss_after": record.loss_after,
        "record": dict(record.record),
    }


def _stream_settings(config: Config) -> StreamSettings:
    return StreamSettings(
        handshake_timeout_s=config.session.handshake_timeout_s,
        send_timeout_s=config.session.send_timeout_s,
        session=SessionSettings(
            rekey_after_seconds=config.session.rekey_after_s,
            rekey_after_messages=config.session.rekey_after_messages,
            # One budget for every session of this node (issue #11: ~4.5 MiB each, unshared).
            reassembly_budget=MemoryBudget(REASSEMBLY_BUDGET_BYTES),
        ),
    )


def _descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (what this process may open), bounded for the arithmetic."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else min(int(soft), 1 << 20)


async def _discover(node: RunningNode) -> None:
    """Feed the peer table from mDNS; expire silent peers."""
    config = node.config.discovery
    async with trio.open_nursery() as nursery:

        async def expire() -> None:
            while True:
                await trio.sleep(EXPIRY_INTERVAL_S)
                for key in node.peers.expire():
                    event(log, logging.INFO, "peer.gone", peer=format_peer_id(key)[:16])

        nursery.start_soon(expire)
        if config.mdns:
            interfaces = list(config.interfaces) or local_interface_addresses()
            async with open_mdns_discovery(
                interfaces=interfaces,
                port=node.listen_port,
                public_key=node.identity.public_key,
                name=node.name,
            ) as discovery:
                event(log, logging.INFO, "mdns.announced", interfaces=",".join(interfaces))
                async for peer in discovery:
                    node.observe(peer)


@asynccontextmanager
async def open_node(
    home: NodeHome, config: Config, options: NodeOptions | None = None
) -> AsyncIterator[RunningNode]:
    """Start a node in the background of the caller's trio run; yield its handle."""
    options = options if options is not None else NodeOptions()
    identity = load_identity(home.identity_path)
    home.create()
    static_peers = parse_static_peers(config.discovery.static_peers)
    database = open_database(home.database_path)
    try:
        rounds = RoundStore(database)
        jobs = JobStore(database)
        abandoned = rounds.abandon_interrupted()
        requeued = jobs.recover_interrupted()
        peers = PeerTable(
            PeerStore(database),
            ttl=config.discovery.peer_expiry_s,
            pin_names=config.trust.trust_on_first_use,
        )
        codecs = CodecStore(home.models_dir, home.features_dir, options.codec)
        codecs.current()  # creates the initial model on first start, validates it otherwise
        policy = TrustPolicy(peers, calls_from=config.trust.calls_from)
        name = config.node.name or sanitize_peer_name(socket.gethostname())
        node_ref: list[RunningNode] = []
        # The call handler needs the node, and the node its connection manager: built below.
        call_handler: list[SessionHandler] = []

        async def serve_calls(session: SessionStream, info: SessionInfo) -> None:
            await call_handler[0](session, info)

        def on_bundle(key: bytes, bundle: Any) -> str | None:
            return node_ref[0].scheduler.receive_bundle(key, bundle)

        def our_bundle() -> WeightsBundle:
            bundle = codecs.current().bundle
            return bundle if options.outgoing_bundle is None else options.outgoing_bundle(bundle)

        limits = connection_limits(
            _descriptor_limit(), max_concurrent_handshakes=config.session.max_concurrent_handshakes
        )
        connections = ConnectionManager(
            identity=StaticIdentity(identity.private_key),
            hello=lambda: node_ref[0].hello(),  # noqa: PLW0108 (node_ref is filled below)
            our_bundle=our_bundle,
            peers=peers,
            policy=policy,
            settings=_stream_settings(config),
            max_concurrent_handshakes=config.session.max_concurrent_handshakes,
            handshakes_per_address_per_s=config.session.handshakes_per_address_per_s,
            handshakes_per_prefix_per_s=config.session.handshakes_per_prefix_per_s,
            max_inbound_sessions=limits.max_sessions,
            max_half_open=limits.max_half_open,
            max_half_open_per_prefix=limits.max_half_open_per_prefix,
            session_idle_s=config.session.idle_timeout_s,
            session_max_age_s=config.session.max_age_s,
            on_bundle=on_bundle,
            on_session=options.session_handler or serve_calls,
        )
        train = options.train or TrainConfig(
            steps=config.fl.local_steps, threads=config.models.cpu_threads
        )
        scheduler = RoundScheduler(
            codecs=codecs,
            connections=connections,
            peers=peers,
            rounds=rounds,
            settings=RoundSettings(
                interval_s=config.fl.round_interval_min * 60.0,
                aggregation=AggregationConfig(
                    alpha=config.fl.alpha,
                    clip_norm_ratio=config.fl.clip_norm_ratio,
                    robust=config.fl.robust,  # type: ignore[arg-type]
                    trim_fraction=config.fl.trim_fraction,
                ),
                train=train,
                train_each_round=options.train_each_round,
                max_loss_increase=config.fl.max_loss_increase,
            ),
            our_peer_id=identity.peer_id,
            on_aggregated=options.on_aggregated,
        )
        node = RunningNode(
            home=home,
            config=config,
            identity=identity,
            database=database,
            peers=peers,
            codecs=codecs,
            connections=connections,
            scheduler=scheduler,
            rounds=rounds,
            jobs=jobs,
            name=name,
            job_runner=JobRunner(jobs, home=home, config=config),
        )
        node_ref.append(node)
        if options.session_handler is None:
            call_handler.append(make_call_handler(node))
        for peer in static_peers:
            node.observe(peer)
        async with trio.open_nursery() as nursery:
            port = options.listen_port if options.listen_port is not None else config.listen.port
            node.listen_port = await nursery.start(connections.serve, config.listen.host, port)
            handlers = {**node.rpc_handlers(), **node.job_runner.rpc_handlers()}
            await nursery.start(serve_rpc, home.socket_path, handlers)
            await nursery.start(node.job_runner.run)
            discovery_scope = trio.CancelScope()

            async def discover() -> None:
                with discovery_scope:
                    await _discover(node)

            nursery.start_soon(discover)
            nursery.start_soon(scheduler.run)
            event(
                log,
                logging.INFO,
                "node.started",
                peer_id=identity.peer_id,
                name=name,
                listen=f"{config.listen.host}:{node.listen_port}",
                abandoned_rounds=abandoned,
                requeued_jobs=requeued,
                model=checkpoint_version(codecs.current()),
            )
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True):
                    discovery_scope.cancel()
                    await connections.close_all_sessions()
                nursery.cancel_scope.cancel()
        event(log, logging.INFO, "node.stopped", peer_id=identity.peer_id)
    finally:
        database.close()


async def run_node(home: NodeHome, config: Config, options: NodeOptions | None = None) -> None:
    """Run until SIGINT/SIGTERM or the ``shutdown`` RPC, then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(home, config, options) as node, trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    event(log, logging.INFO, "node.signal", signal=signal.Signals(signum).name)
                    node.shutdown_requested.set()

            nursery.start_soon(on_signal)
            await node.shutdown_requested.wait()
            nursery.cancel_scope.cancel()


__all__ = ["NodeOptions", "RunningNode", "open_node", "run_node"]
