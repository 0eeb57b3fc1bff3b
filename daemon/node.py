"""``parley node``: the long-running node, wired from small collaborators.

This module only builds and connects the parts (docs/design.md, "The node"), in
three steps: :func:`_build_node` builds each collaborator (peer table, codec store, connection
manager, round scheduler, storage bound, job runner...) from the config and the parts below it;
:func:`_wire_node` connects the few that talk both ways (bundles to the scheduler, sessions to
the call service); :func:`open_node` then runs them all in one nursery and yields a handle;
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from codec.config import CodecConfig
from daemon.calls import CALLS_DIR, CallObserver, CallService, make_call_handler
from daemon.candidates import CANDIDATES_FILE_NAME, CandidateStore
from daemon.codec_store import CodecStore
from daemon.config import Config, FlSection
from daemon.connections import (
    ConnectionManager,
    ConnectionStats,
    Rejection,
    SessionHandler,
    connection_limits,
)
from daemon.database import (
    Database,
    JobStore,
    PeerSource,
    PeerStore,
    RoundStore,
    open_database,
)
from daemon.discovery import (
    DiscoveredPeer,
    open_mdns_discovery,
    parse_static_peers,
)
from daemon.errors import RuntimeFailure
from daemon.faults import FaultLog, run_isolated
from daemon.home import NodeHome
from daemon.identity import Identity, load_identity
from daemon.interface_watch import follow_interfaces
from daemon.jobs import CAPTIONS_DIR_NAME, JobRunner
from daemon.logs import event, get_logger
from daemon.peers import (
    KeyChangedError,
    PeerTable,
    format_peer_id,
    sanitize_peer_name,
)
from daemon.rpc_calls import call_methods
from daemon.rpc_handlers import (
    MethodsOf,
    job_methods,
    known_peer_views,
    node_methods,
    node_status,
    recent_round_views,
    serve_methods,
    stored_status,
)
from daemon.rpc_server import prepare_socket_path, serve_rpc
from daemon.scheduler import RoundScheduler, RoundSettings, checkpoint_version
from daemon.storage import StorageBound
from daemon.trust import CallsFrom
from daemon.trust_policy import TrustPolicy
from daemon.views import to_wire
from fl.aggregate import AggregationResult
from fl.config import AggregationConfig, TrainConfig
from handshake.budget import MemoryBudget
from handshake.noise import StaticIdentity
from handshake.session import REASSEMBLY_BUDGET_BYTES, SessionSettings
from handshake.stream import StreamSettings
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
#: "call-dtx/1": this node's calls accept discontinuous transmission (media.call_sender).
CAPABILITIES: Final = ("fl/1", "call/1", "call-dtx/1")

Handler = Callable[[Any], Awaitable[object]]


class ListenError(RuntimeFailure):
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


class FirstContacts:
    """Keys of strangers refused at the handshake, recorded in the trust list later.

    The trust decision runs inside the handshake and only reads; :meth:`offer` queues the key
    (a full queue counts ``busy``) and :meth:`record` writes them in worker threads.
    """

    def __init__(
        self, stats: ConnectionStats, *, capacity: int = MAX_PENDING_FIRST_CONTACTS
    ) -> None:
        self._stats = stats
        self._send, self._receive = trio.open_memory_channel[bytes](capacity)

    def offer(self, key: bytes) -> None:
        try:
            self._send.send_nowait(key)
        except trio.WouldBlock:
            self._stats.reject(Rejection.BUSY)

    async def record(self, peers: PeerTable, faults: FaultLog) -> None:
        async for key in self._receive:
            write = functools.partial(
                peers.record_handshake, key, address=None, source=PeerSource.INBOUND
            )

            async def in_thread(write: Callable[[], object] = write) -> None:
                await trio.to_thread.run_sync(write)

            await run_isolated(faults, "peer_record", in_thread)


class HomeStorage:
    """The ``storage`` bound on ``calls/`` and ``captions/``, sparing what is in use: the
    calls in progress and the running caption job (both wired in after they are built)."""

    def __init__(self, bound: StorageBound, captions_dir: Path) -> None:
        self.bound = bound
        self._captions_dir = captions_dir
        self._calls: CallService | None = None
        self._jobs: JobRunner | None = None

    def wire(self, *, calls: CallService | None, jobs: JobRunner) -> None:
        self._calls = calls
        self._jobs = jobs

    def enforce(self) -> None:
        """Blocking: run it in a worker thread."""
        in_use = set(self._calls.active_dirs) if self._calls is not None else set()
        running = self._jobs.progress if self._jobs is not None else None
        if running is not None:
            in_use.add(self._captions_dir / str(running["id"]))
        self.bound.enforce(in_use=in_use)


def our_hello(codecs: CodecStore) -> Hello:
    """What this node says about itself in every handshake: its codec, now."""
    ours = codecs.current()
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=CAPABILITIES,
        codec_architecture=ours.config.architecture_id,
        codec_version_hash=ours.version_hash,
    )


@dataclass(slots=True)
class RunningNode:
    """A handle on a running node: its collaborators, for the RPC, the web page, tests and
    simulations. It holds the parts; :func:`open_node` builds and wires them."""

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
    home_storage: HomeStorage
    faults: FaultLog
    listen_port: int = 0
    #: Set by daemon.calls.make_call_handler when this node serves calls.
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
        return our_hello(self.codecs)

    def observe(self, peer: DiscoveredPeer) -> None:
        """A peer discovery found (mDNS, a static entry): into the peer table, unless it is
        us; a pinned name announced with another key is logged and kept for the user."""
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
        self.home_storage.enforce()

    def apply_fl_settings(self, fl: FlSection) -> None:
        """The ``[fl]`` settings of a reloaded config, for the rounds from now on."""
        current = self.scheduler.settings
        self.scheduler.update_settings(
            dataclasses.replace(
                current,
                interval_s=fl.round_interval_min * 60.0,
                aggregation=_aggregation_config(fl),
                train=dataclasses.replace(current.train, steps=fl.local_steps),
                personalization=fl.personalization,
            )
        )

    # The status RPC's views, as plain maps, for the web page and tests (blocking: they read
    # the database). The RPC methods themselves are daemon.rpc_handlers'.

    def status(self) -> dict[str, object]:
        shown: dict[str, object] = to_wire(node_status(self, stored_status(self)))
        return shown

    def peer_list(self) -> list[dict[str, object]]:
        shown: list[dict[str, object]] = to_wire(known_peer_views(self.peers))
        return shown

    def round_list(self, *, limit: int = 20) -> list[dict[str, object]]:
        shown: list[dict[str, object]] = to_wire(recent_round_views(self, limit=limit))
        return shown


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
            # No key outlives the session age; a fresh key exchange at 2/3 of it (120 of 180 s).
            reject_after_seconds=config.session.max_age_s,
            rehandshake_after_seconds=config.session.max_age_s * 2 / 3,
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
                await trio.to_thread.run_sync(node.peers.save_candidates)
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


#: Every module that serves RPC methods on the node's socket, as a function from the running
#: node to its ``{method: handler}`` map (daemon.rpc_handlers): one line a module.
RPC_METHODS: Final[tuple[MethodsOf, ...]] = (
    node_methods,
    job_methods,
    call_methods,
)


def _build_node(
    home: NodeHome,
    config: Config,
    options: NodeOptions,
    *,
    identity: Identity,
    database: Database,
    rounds: RoundStore,
    jobs: JobStore,
) -> tuple[RunningNode, FirstContacts]:
    """Each collaborator, built from the config and the parts below it; :func:`_wire_node`
    then connects the ones that talk to each other both ways."""
    faults = FaultLog()
    peers = PeerTable(
        PeerStore(database),
        ttl=config.discovery.peer_expiry_s,
        pin_names=config.trust.trust_on_first_use,
        candidates=CandidateStore.open(home.root / CANDIDATES_FILE_NAME, clock=time.time),
    )
    codecs = CodecStore(home.models_dir, home.features_dir, options.codec)
    codecs.current()  # creates the initial model on first start, validates it otherwise
    stats = ConnectionStats()
    first_contacts = FirstContacts(stats)
    policy = TrustPolicy(
        peers, calls_from=CallsFrom(config.trust.calls_from), on_first_contact=first_contacts.offer
    )

    def our_bundle() -> WeightsBundle:
        bundle = codecs.current().bundle
        return bundle if options.outgoing_bundle is None else options.outgoing_bundle(bundle)

    limits = connection_limits(
        _descriptor_limit(), max_concurrent_handshakes=config.session.max_concurrent_handshakes
    )
    connections = ConnectionManager(
        identity=StaticIdentity(identity.private_key),
        hello=functools.partial(our_hello, codecs),
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
        faults=faults,
        stats=stats,
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
            personalization=config.fl.personalization,
        ),
        our_peer_id=identity.peer_id,
        on_aggregated=options.on_aggregated,
        faults=faults,
    )
    home_storage = HomeStorage(
        StorageBound(
            [home.root / CALLS_DIR, home.root / CAPTIONS_DIR_NAME],
            max_bytes=config.storage.max_bytes,
            keep_days=config.storage.keep_days,
        ),
        home.root / CAPTIONS_DIR_NAME,
    )
    job_runner = JobRunner(
        jobs, home=home, config=config, faults=faults, after_job=home_storage.enforce
    )
    name = config.node.name or sanitize_peer_name(socket.gethostname())
    # The parts in RunningNode's field order (each a distinct type: mypy checks the order).
    parts = (home, config, identity, database, peers, codecs, connections, scheduler, rounds)
    node = RunningNode(*parts, jobs, name, job_runner, home_storage, faults)
    return node, first_contacts


def _wire_node(node: RunningNode, options: NodeOptions) -> None:
    """Connect the parts that talk both ways: the connection manager hands trusted peers'
    bundles to the round scheduler (which dials through it) and open sessions to the call
    service (which counts its refusals in the manager's stats); the storage bound spares the
    calls and the caption job in progress (and runs after each of them)."""
    session_handler = options.session_handler
    if session_handler is None:
        session_handler = make_call_handler(node)  # sets node.call_service
    node.connections.wire(on_bundle=node.scheduler.receive_bundle, on_session=session_handler)
    node.home_storage.wire(calls=node.call_service, jobs=node.job_runner)


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
        rounds, jobs = RoundStore(database), JobStore(database)
        abandoned = rounds.abandon_interrupted()
        requeued = jobs.recover_interrupted()
        node, first_contacts = _build_node(
            home, config, options, identity=identity, database=database, rounds=rounds, jobs=jobs
        )
        _wire_node(node, options)
        for peer in static_peers:
            node.observe(peer)
        async with trio.open_nursery() as nursery:
            port = options.listen_port if options.listen_port is not None else config.listen.port
            node.listen_port = await _listen(nursery, node.connections, config.listen.host, port)
            handlers = serve_methods(node, RPC_METHODS, node.faults)
            await nursery.start(serve_rpc, home.socket_path, handlers)
            await nursery.start(node.job_runner.run)
            if node.call_service is not None:  # the calls we place (RPC call.place) run here
                await nursery.start(node.call_service.serve_placed_calls)
            if config.web.enabled:
                from daemon.web.server import serve_node_web

                await nursery.start(serve_node_web, node, options.web_port)
                if node.web_url is not None and options.on_web_started is not None:
                    options.on_web_started(node)
            discovery_scope = trio.CancelScope()

            async def discover() -> None:
                with discovery_scope:
                    while not await run_isolated(node.faults, "discovery", lambda: _discover(node)):
                        await trio.sleep(DISCOVERY_RESTART_S)

            async def bound_storage() -> None:
                while True:
                    await run_isolated(
                        node.faults,
                        "storage",
                        lambda: trio.to_thread.run_sync(node.enforce_storage_limits),
                    )
                    await trio.sleep(STORAGE_INTERVAL_S)

            nursery.start_soon(discover)
            nursery.start_soon(node.scheduler.run)
            nursery.start_soon(first_contacts.record, node.peers, node.faults)
            nursery.start_soon(bound_storage)
            event(
                log,
                logging.INFO,
                "node.started",
                peer_id=identity.peer_id,
                name=node.name,
                listen=f"{config.listen.host}:{node.listen_port}",
                abandoned_rounds=abandoned,
                requeued_jobs=requeued,
                model=checkpoint_version(node.codecs.current()),
            )
            try:
                yield node
            finally:
                with trio.CancelScope(shield=True):
                    discovery_scope.cancel()
                    await node.connections.close_all_sessions()
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
