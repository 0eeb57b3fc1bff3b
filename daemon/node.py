"""``parley node``: the long-running node, wired from small collaborators.

This module only builds and connects the parts (STYLE.md 6): identity, database, peer table,
codec store, connection manager, round scheduler, discovery and the status RPC, each of which
is tested alone. :func:`open_node` runs them all in one nursery and yields a handle;
leaving the ``async with`` (or the ``shutdown`` RPC, or SIGINT/SIGTERM in :func:`run_node`)
shuts down in order: stop discovery (mDNS goodbye), send ``Bye`` on open sessions, let a
running round finish or fail cleanly, close the database.

Isolation (:mod:`daemon.faults`): every connection, RPC request, round, job and the discovery
task is one unit; an unexpected exception ends that unit only and is counted by type under
``faults`` in the status. Database work on the connection and RPC paths runs in worker threads,
so a database locked by another process delays that unit, not the event loop.
"""

from __future__ import annotations

import dataclasses
import functools
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

from codec.config import CodecConfig
from daemon.calls import CALLS_DIR, CallObserver, CallService, make_call_handler
from daemon.codec_store import CodecStore
from daemon.config import Config, FlSection
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
    PeerSource,
    PeerStore,
    RoundRecord,
    RoundStatus,
    RoundStore,
    open_database,
)
from daemon.discovery import (
    DiscoveredPeer,
    open_mdns_discovery,
    parse_static_peers,
)
from daemon.faults import FaultLog, run_isolated
from daemon.home import NodeHome
from daemon.identity import Identity, load_identity
from daemon.interface_watch import follow_interfaces
from daemon.jobs import CAPTIONS_DIR_NAME, JobRunner, job_dict
from daemon.logs import event, get_logger
from daemon.peers import (
    KeyChangedError,
    PeerTable,
    format_peer_id,
    sanitize_peer_name,
)
from daemon.rpc import RpcHandlerError
from daemon.rpc_server import prepare_socket_path, serve_rpc
from daemon.scheduler import RoundInProgressError, RoundScheduler, RoundSettings, checkpoint_version
from daemon.status_view import key_change_dicts, peer_rows
from daemon.storage import StorageBound
from daemon.trust_policy import TrustPolicy
from daemon.version import parley_version
from fl.aggregate import AggregationResult
from fl.config import AggregationConfig, TrainConfig
from handshake.noise import StaticIdentity
from handshake.session import REASSEMBLY_BUDGET_BYTES, MemoryBudget, SessionSettings
from handshake.stream import SessionStream, StreamSettings
from schemas.messages import PROTOCOL_VERSION, Hello, WeightsBundle

log = get_logger("node")

#: How often the peer table drops peers that stopped announcing themselves.
EXPIRY_INTERVAL_S: Final = 10.0
#: How often the storage bound runs besides after each call and job.
STORAGE_INTERVAL_S: Final = 3600.0
#: A discovery task that failed is started again after this long.
DISCOVERY_RESTART_S: Final = 30.0
#: First-contact keys (strangers refused at the handshake) waiting to be recorded.
MAX_PENDING_FIRST_CONTACTS: Final = 256
CAPABILITIES: Final = ("fl/1", "call/1")

Handler = Callable[[Any], Awaitable[object]]


class ListenError(Exception):
    """The node cannot listen on its TCP address (in use, not ours); one line for the user."""


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
    #: The web page's port instead of ``web.port`` (0: any free port; tests and benches).
    web_port: int | None = None
    #: Called with the web page's base URL once it is served (``parley node --open``).
    on_web_started: Callable[[RunningNode], None] | None = None


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
    storage: StorageBound
    faults: FaultLog
    listen_port: int = 0
    call_service: CallService | None = None
    #: Told of every call this node serves (the web page's live captions); see daemon.calls.
    call_observers: list[CallObserver] = field(default_factory=list)
    #: Where the web page is served (``http://host:port``), once it is; see daemon.web.server.
    web_url: str | None = None
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

    def enforce_storage_limits(self) -> None:
        """The ``storage`` bound on ``calls/`` and ``captions/`` (blocking: a worker thread)."""
        in_use = set(self.call_service.active_dirs) if self.call_service is not None else set()
        running = self.job_runner.progress
        if running is not None:
            in_use.add(self.home.root / CAPTIONS_DIR_NAME / str(running["id"]))
        self.storage.enforce(in_use=in_use)

    def apply_fl_settings(self, fl: FlSection) -> None:
        """The ``[fl]`` settings of a reloaded config, for the rounds from now on."""
        current = self.scheduler.settings
        self.scheduler.update_settings(
            dataclasses.replace(
                current,
                interval_s=fl.round_interval_min * 60.0,
                aggregation=_aggregation_config(fl),
                train=dataclasses.replace(current.train, steps=fl.local_steps),
            )
        )

    # -- status RPC --------------------------------------------------------------------------

    def _status_from_database(self) -> dict[str, object]:
        """The parts of the status read from ``node.db`` (blocking: run in a worker thread)."""
        last = self.rounds.recent(limit=1)
        known = self.peers.known()
        return {
            "last_round": _round_dict(last[0]) if last else None,
            "peers_known": len(known),
            "peers_present": sum(1 for peer in known if self.peers.is_present(peer.public_key)),
            "peers_trusted": sum(1 for peer in known if peer.trust.value == "trusted"),
            "rounds_completed": self.rounds.count(status=RoundStatus.COMPLETED),
            "jobs_pending": self.jobs.count(status=JobStatus.PENDING),
            "key_changes": key_change_dicts(self.peers.pending_key_changes(limit=20)),
        }

    async def status_async(self) -> dict[str, object]:
        """:meth:`status` with its database reads in a worker thread (the RPC's version)."""
        stored = await trio.to_thread.run_sync(self._status_from_database)
        return self._status(stored)

    def status(self) -> dict[str, object]:
        return self._status(self._status_from_database())

    def _status(self, stored: dict[str, object]) -> dict[str, object]:
        ours = self.codecs.current()
        return {
            "node_id": self.peer_id,
            "name": self.name,
            "version": parley_version(),
            "uptime_s": time.time() - self.started_at,
            "listen": f"{self.config.listen.host}:{self.listen_port}",
            "model_version": checkpoint_version(ours),
            "codec": {
                "architecture": ours.config.architecture_id,
                "kbps": ours.config.kbps,
                "round": ours.checkpoint.round,
                "warnings": list(self.codecs.warnings),
            },
            "last_round": stored["last_round"],
            "round_running": self.scheduler.current_round,
            "counts": {
                "peers_known": stored["peers_known"],
                "peers_present": stored["peers_present"],
                "peers_trusted": stored["peers_trusted"],
                "sessions": len(self.connections.sessions),
                "rounds_completed": stored["rounds_completed"],
                "jobs_pending": stored["jobs_pending"],
            },
            "connections": self.connections.stats.as_dict(),
            "limits": self.connections.limits(),
            "job_running": self.job_runner.progress,
            "calls": self.call_service.status() if self.call_service is not None else None,
            "faults": self.faults.as_dict(),
            "storage": self.storage.status(),
            "key_changes": stored["key_changes"],
            "names_not_pinned": self.peers.names_not_pinned,
        }

    def peer_list(self) -> list[dict[str, object]]:
        """Every known peer with its trust and presence (the RPC's ``peers``, the web's)."""
        records = self.peers.known()
        rows = peer_rows(records, self.peers.pending_key_changes())
        return [
            {**row, "present": self.peers.is_present(record.public_key)}
            for row, record in zip(rows, records, strict=True)
        ]

    def round_list(self, *, limit: int = 20) -> list[dict[str, object]]:
        """The latest FL rounds, newest first (the RPC's ``rounds``, the web's)."""
        return [_round_dict(record) for record in self.rounds.recent(limit=limit)]

    def rpc_handlers(self) -> dict[str, Handler]:
        async def status(params: Any) -> object:
            return await self.status_async()

        async def peers(params: Any) -> object:
            return await trio.to_thread.run_sync(self.peer_list)

        async def sessions(params: Any) -> object:
            return [info.as_dict() for info in self.connections.sessions.values()]

        async def rounds(params: Any) -> object:
            limit = _int_param(params, "limit", 20)
            return await trio.to_thread.run_sync(functools.partial(self.round_list, limit=limit))

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
            limit = _int_param(params, "limit", 100)
            listed = await trio.to_thread.run_sync(functools.partial(self.jobs.list, limit=limit))
            return [job_dict(job) for job in listed]

        async def web_info(params: Any) -> object:
            return {"url": self.web_url}

        async def shutdown(params: Any) -> object:
            self.shutdown_requested.set()
            return {"shutting_down": True}

        handlers: dict[str, Handler] = {
            "status": status,
            "peers": peers,
            "sessions": sessions,
            "rounds": rounds,
            "round.start": round_start,
            "jobs": jobs,
            "web.info": web_info,
            "shutdown": shutdown,
        }
        return {name: self.counted(name, handler) for name, handler in handlers.items()}

    def counted(self, method: str, handler: Handler) -> Handler:
        """``handler`` with its unexpected errors counted in ``faults`` (the RPC server turns
        them into an error reply; the node goes on)."""

        async def run(params: Any) -> object:
            try:
                return await handler(params)
            except RpcHandlerError:
                raise
            except Exception as error:
                self.faults.record(f"rpc:{method}", error)
                raise

        return run


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


def _aggregation_config(fl: FlSection) -> AggregationConfig:
    return AggregationConfig(
        alpha=fl.alpha,
        clip_norm_ratio=fl.clip_norm_ratio,
        robust=fl.robust,  # type: ignore[arg-type]
        trim_fraction=fl.trim_fraction,
    )


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

        async def announce_and_browse(interfaces: list[str]) -> None:
            async with open_mdns_discovery(
                interfaces=interfaces,
                port=node.listen_port,
                public_key=node.identity.public_key,
                name=node.name,
            ) as discovery:
                event(log, logging.INFO, "mdns.announced", interfaces=",".join(interfaces))
                async for peer in discovery:
                    node.observe(peer)

        if config.mdns and config.interfaces:
            await announce_and_browse(list(config.interfaces))
        elif config.mdns:
            # No interfaces named: follow this machine's addresses as they come and go.
            await follow_interfaces(announce_and_browse)


@asynccontextmanager
async def open_node(
    home: NodeHome, config: Config, options: NodeOptions | None = None
) -> AsyncIterator[RunningNode]:
    """Start a node in the background of the caller's trio run; yield its handle."""
    options = options if options is not None else NodeOptions()
    identity = load_identity(home.identity_path)
    home.create()
    # Before the database: a second node on this home must not touch the first one's state
    # (it would mark the first node's running round abandoned and requeue its jobs).
    prepare_socket_path(home.socket_path)
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
        faults = FaultLog()
        first_contacts_send, first_contacts_receive = trio.open_memory_channel[bytes](
            MAX_PENDING_FIRST_CONTACTS
        )

        def first_contact(key: bytes) -> None:
            # Called inside the handshake (synchronous): the write happens in a worker thread.
            try:
                first_contacts_send.send_nowait(key)
            except trio.WouldBlock:
                connections.stats.reject("busy")

        policy = TrustPolicy(
            peers, calls_from=config.trust.calls_from, on_first_contact=first_contact
        )
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
            max_half_open_per_prefix=min(
                config.session.half_open_per_prefix or limits.max_half_open_per_prefix,
                limits.max_half_open,
            ),
            session_idle_s=config.session.idle_timeout_s,
            session_max_age_s=config.session.max_age_s,
            on_bundle=on_bundle,
            on_session=options.session_handler or serve_calls,
            faults=faults,
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
                aggregation=_aggregation_config(config.fl),
                train=train,
                train_each_round=options.train_each_round,
                max_loss_increase=config.fl.max_loss_increase,
            ),
            our_peer_id=identity.peer_id,
            on_aggregated=options.on_aggregated,
            faults=faults,
        )
        storage = StorageBound(
            [home.root / CALLS_DIR, home.root / CAPTIONS_DIR_NAME],
            max_bytes=config.storage.max_bytes,
            keep_days=config.storage.keep_days,
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
            job_runner=JobRunner(
                jobs,
                home=home,
                config=config,
                faults=faults,
                after_job=lambda: node_ref[0].enforce_storage_limits(),  # noqa: PLW0108 (filled below)
            ),
            storage=storage,
            faults=faults,
        )
        node_ref.append(node)
        if options.session_handler is None:
            call_handler.append(make_call_handler(node))
        for peer in static_peers:
            node.observe(peer)
        async with trio.open_nursery() as nursery:
            port = options.listen_port if options.listen_port is not None else config.listen.port
            node.listen_port = await _listen(nursery, connections, config.listen.host, port)
            jobs_handlers = node.job_runner.rpc_handlers()
            handlers = {
                **node.rpc_handlers(),
                **{name: node.counted(name, h) for name, h in jobs_handlers.items()},
            }
            await nursery.start(serve_rpc, home.socket_path, handlers)
            await nursery.start(node.job_runner.run)
            if config.web.enabled:
                from daemon.web.server import serve_node_web

                await nursery.start(serve_node_web, node, options.web_port)
                if node.web_url is not None and options.on_web_started is not None:
                    options.on_web_started(node)
            discovery_scope = trio.CancelScope()

            async def discover() -> None:
                with discovery_scope:
                    while not await run_isolated(faults, "discovery", lambda: _discover(node)):
                        await trio.sleep(DISCOVERY_RESTART_S)

            async def record_first_contacts() -> None:
                async for key in first_contacts_receive:
                    record = functools.partial(
                        peers.record_handshake, key, address=None, source=PeerSource.INBOUND
                    )

                    async def write(record: Callable[[], object] = record) -> None:
                        await trio.to_thread.run_sync(record)

                    await run_isolated(faults, "peer_record", write)

            async def bound_storage() -> None:
                while True:
                    await run_isolated(
                        faults,
                        "storage",
                        lambda: trio.to_thread.run_sync(node.enforce_storage_limits),
                    )
                    await trio.sleep(STORAGE_INTERVAL_S)

            nursery.start_soon(discover)
            nursery.start_soon(scheduler.run)
            nursery.start_soon(record_first_contacts)
            nursery.start_soon(bound_storage)
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


async def _listen(
    nursery: trio.Nursery, connections: ConnectionManager, host: str, port: int
) -> int:
    try:
        bound: int = await nursery.start(connections.serve, host, port)
    except OSError as error:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = (error.strerror or str(error)).lower()
        raise ListenError(f"cannot listen on {shown}: {reason}") from None
    return bound


async def run_node(
    home: NodeHome,
    config: Config,
    options: NodeOptions | None = None,
    *,
    on_reload: Callable[[RunningNode], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM or the ``shutdown`` RPC, then shut down gracefully.

    ``SIGHUP`` calls ``on_reload`` (the CLI re-reads config.toml and applies what it can
    without a restart); without one, ``SIGHUP`` is logged and ignored.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with open_node(home, config, options) as node, trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for signum in signals:
                    event(log, logging.INFO, "node.signal", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        if on_reload is not None:
                            on_reload(node)
                        continue
                    node.shutdown_requested.set()

            nursery.start_soon(on_signal)
            await node.shutdown_requested.wait()
            nursery.cancel_scope.cancel()


__all__ = ["ListenError", "NodeOptions", "RunningNode", "open_node", "run_node"]
