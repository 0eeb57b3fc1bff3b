"""The node's own RPC methods: ``status``, ``peers``, ``sessions``, ``rounds``, ``round.start``,
``jobs``, ``web.info`` and ``shutdown``.

Each method asks the collaborators it needs (the peer table, the round store, the connection
manager...) and answers a typed view (:mod:`daemon.views`), turned into plain maps only here, at
the RPC edge (:func:`daemon.views.to_wire`). Database reads run in worker threads, so a database
locked by another process delays that one request, never the event loop.

Other modules serve methods of their own the same way: a function from the running node to a
``{method: handler}`` map (:func:`node_methods`, :func:`job_methods`); :mod:`daemon.node` lists
those functions in one tuple and serves their union (docs/design.md, "The node").
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import trio

from daemon.database import JobStatus, RoundStatus
from daemon.faults import FaultLog
from daemon.peers import PeerTable
from daemon.rpc import Params, RpcErrorCode, RpcHandlerError
from daemon.rpc_server import Handler
from daemon.scheduler import RoundInProgressError, checkpoint_version
from daemon.trust import TrustState
from daemon.version import parley_version
from daemon.views import (
    CodecView,
    JobProgressView,
    KeyChangeView,
    NodeStatus,
    PeerView,
    RoundRequested,
    RoundView,
    StatusCounts,
    StorageView,
    from_wire,
    key_change_views,
    peer_views,
    round_view,
    to_wire,
)

if TYPE_CHECKING:
    from daemon.node import RunningNode

#: The handlers one module serves: method name -> handler.
RpcMethods: TypeAlias = dict[str, Handler]
#: A module's methods, built for one running node.
MethodsOf: TypeAlias = Callable[["RunningNode"], RpcMethods]

#: ``rounds`` and ``jobs`` list at most this many (and at least one).
MAX_LIMIT = 100_000


# -- views ----------------------------------------------------------------------------------


def known_peer_views(peers: PeerTable) -> list[PeerView]:
    """Every known peer with its trust and presence (blocking: a worker thread)."""
    return peer_views(peers.known(), peers.pending_key_changes(), present=peers.is_present)


def recent_round_views(node: RunningNode, *, limit: int = 20) -> list[RoundView]:
    """The latest FL rounds, newest first (blocking: a worker thread)."""
    return [round_view(record) for record in node.rounds.recent(limit=limit)]


@dataclass(frozen=True, slots=True)
class StoredStatus:
    """The parts of the status read from ``node.db`` (``counts.sessions`` is the loop's)."""

    last_round: RoundView | None
    counts: StatusCounts
    key_changes: tuple[KeyChangeView, ...]


def stored_status(node: RunningNode) -> StoredStatus:
    """Blocking: run it in a worker thread."""
    last = node.rounds.recent(limit=1)
    known = node.peers.known()
    return StoredStatus(
        last_round=round_view(last[0]) if last else None,
        counts=StatusCounts(
            peers_known=len(known),
            peers_present=sum(1 for peer in known if node.peers.is_present(peer.public_key)),
            peers_trusted=sum(1 for peer in known if peer.trust is TrustState.TRUSTED),
            sessions=0,
            rounds_completed=node.rounds.count(status=RoundStatus.COMPLETED),
            jobs_pending=node.jobs.count(status=JobStatus.PENDING),
        ),
        key_changes=key_change_views(node.peers.pending_key_changes(limit=20)),
    )


def node_status(node: RunningNode, stored: StoredStatus) -> NodeStatus:
    """What ``parley status`` shows: ``stored`` and the node's live state (on the loop)."""
    ours = node.codecs.current()
    running_job = node.job_runner.progress
    return NodeStatus(
        node_id=node.peer_id,
        name=node.name,
        version=parley_version(),
        uptime_s=time.time() - node.started_at,
        listen=f"{node.config.listen.host}:{node.listen_port}",
        model_version=checkpoint_version(ours),
        codec=CodecView(
            architecture=ours.config.architecture_id,
            kbps=ours.config.kbps,
            round=ours.checkpoint.round,
            warnings=tuple(node.codecs.warnings),
        ),
        last_round=stored.last_round,
        round_running=node.scheduler.current_round,
        counts=dataclasses.replace(stored.counts, sessions=len(node.connections.sessions)),
        connections=node.connections.stats.view(),
        limits=node.connections.limits(),
        job_running=None if running_job is None else from_wire(JobProgressView, running_job),
        calls=node.call_service.status() if node.call_service is not None else None,
        faults=node.faults.view(),
        storage=from_wire(StorageView, node.home_storage.bound.status()),
        key_changes=stored.key_changes,
        names_not_pinned=node.peers.names_not_pinned,
    )


# -- the methods ----------------------------------------------------------------------------


def _param(params: Params, name: str, default: object) -> object:
    return params.get(name, default) if isinstance(params, Mapping) else default


def _limit_param(params: Params, default: int) -> int:
    value = _param(params, "limit", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise RpcHandlerError(
            RpcErrorCode.INVALID_PARAMS, f"limit must be an integer 1..{MAX_LIMIT}"
        )
    return value


def node_methods(node: RunningNode) -> RpcMethods:
    """The node's own methods (see the module docstring)."""

    async def status(params: Params) -> object:
        stored = await trio.to_thread.run_sync(stored_status, node)
        return to_wire(node_status(node, stored))

    async def peers(params: Params) -> object:
        return to_wire(await trio.to_thread.run_sync(known_peer_views, node.peers))

    async def sessions(params: Params) -> object:
        return to_wire([info.view() for info in node.connections.sessions.values()])

    async def rounds(params: Params) -> object:
        listed = functools.partial(recent_round_views, node, limit=_limit_param(params, 20))
        return to_wire(await trio.to_thread.run_sync(listed))

    async def round_start(params: Params) -> object:
        if _param(params, "wait", False):
            try:
                record = await node.scheduler.run_round()
            except RoundInProgressError as error:
                raise RpcHandlerError("round_in_progress", str(error)) from None
            return to_wire(round_view(record))
        if node.scheduler.running:
            raise RpcHandlerError("round_in_progress", "a round is already running")
        node.scheduler.request_round()
        return to_wire(RoundRequested(requested=True))

    async def web_info(params: Params) -> object:
        return {"url": node.web_url}

    async def shutdown(params: Params) -> object:
        node.shutdown_requested.set()
        return {"shutting_down": True}

    return {
        "status": status,
        "peers": peers,
        "sessions": sessions,
        "rounds": rounds,
        "round.start": round_start,
        "web.info": web_info,
        "shutdown": shutdown,
    }


def job_methods(node: RunningNode) -> RpcMethods:
    """``jobs`` (the list) and the job runner's own ``caption.*`` / ``dub.*`` methods."""
    from daemon.jobs import job_dict

    async def jobs(params: Params) -> object:
        listed = functools.partial(node.jobs.list, limit=_limit_param(params, 100))
        return [job_dict(job) for job in await trio.to_thread.run_sync(listed)]

    return {"jobs": jobs, **node.job_runner.rpc_handlers()}


def counted(faults: FaultLog, method: str, handler: Handler) -> Handler:
    """``handler`` with its unexpected errors counted in ``faults`` (the RPC server turns
    them into an error reply; the node goes on)."""

    async def run(params: Params) -> object:
        try:
            return await handler(params)
        except RpcHandlerError:
            raise
        except Exception as error:
            faults.record(f"rpc:{method}", error)
            raise

    return run


def serve_methods(
    node: RunningNode, modules: Iterable[MethodsOf], faults: FaultLog
) -> dict[str, Handler]:
    """The union of every module's methods, each counted in ``faults``; a method served by
    two modules is a wiring mistake, refused at start."""
    served: dict[str, Handler] = {}
    for methods_of in modules:
        for name, handler in methods_of(node).items():
            if name in served:
                raise ValueError(f"RPC method {name!r} is served twice")
            served[name] = counted(faults, name, handler)
    return served


__all__ = [
    "MethodsOf",
    "RpcMethods",
    "StoredStatus",
    "counted",
    "job_methods",
    "known_peer_views",
    "node_methods",
    "node_status",
    "recent_round_views",
    "serve_methods",
    "stored_status",
]
