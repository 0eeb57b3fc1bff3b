"""What the status RPC answers, as typed views: one frozen dataclass per thing shown.

The node's RPC handlers (:mod:`daemon.rpc_handlers`) build these views from its collaborators;
:func:`to_wire` turns one into the plain maps and lists msgpack-RPC carries (and ``--json``
prints), with the field names as keys. The CLI turns a reply back with :func:`from_wire`, which
checks every field's type against the annotation, and :mod:`daemon.status_view` renders the
views by attribute. Keys a view does not know are ignored (an older CLI reads a newer node's
reply); a missing key takes the field's default, or is an error (:class:`ViewError`).

Pure data and pure functions: no trio, no database access, no sockets (docs/design.md,
"The node").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from daemon.database import KeyChangeEvent, PeerRecord, RoundRecord
from daemon.errors import DaemonError
from daemon.peers import fingerprint, format_peer_id, seen_at

__all__ = [
    "CodecView",
    "ConnectionStatsView",
    "FaultsView",
    "JobProgressView",
    "JobView",
    "KeyChangeView",
    "LimitsView",
    "NodeStatus",
    "PeerView",
    "RoundRequested",
    "RoundView",
    "SessionView",
    "StatusCounts",
    "StatusReport",
    "StorageView",
    "ViewError",
    "from_wire",
    "key_change_views",
    "peer_views",
    "round_view",
    "to_wire",
]

#: Field metadata: leave the key out of the wire form while the value is ``None``.
OMIT_IF_NONE: Final = {"omit_if_none": True}


class ViewError(DaemonError):
    """A reply does not have the shape its view expects (a node of another version?)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecView:
    architecture: str
    kbps: float
    round: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusCounts:
    peers_known: int
    peers_present: int
    peers_trusted: int
    sessions: int
    rounds_completed: int
    jobs_pending: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStatsView:
    handshakes_completed: int
    handshakes_failed: int
    bytes_sent: int
    bytes_received: int
    bundles_sent: int
    bundles_received: int
    #: Refusals counted by reason code (daemon.connections.Rejection, ``invalid_bundle:*``...).
    rejected: dict[str, int] = field(default_factory=dict)
    handshake_p50_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsView:
    max_sessions: int
    inbound_sessions: int
    max_half_open: int
    max_half_open_per_prefix: int
    half_open: int
    reassembly_budget_bytes: int | None = None
    reassembly_in_use_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultsView:
    total: int
    by_type: dict[str, int] = field(default_factory=dict)
    by_unit: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageView:
    bytes_used: int
    folders: int
    deleted_folders: int
    deleted_bytes: int
    max_bytes: int | None
    keep_days: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobProgressView:
    id: str
    stage: str
    fraction: float


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyChangeView:
    """A pinned name announced with another key, waiting for the user."""

    name: str
    pinned: str
    offered: str
    offered_id: str
    source: str
    address: str | None
    seen_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundView:
    """One FL round as listed (``rounds``, ``round.start --wait``, the status' last round)."""

    round: int
    status: str
    started_at: float
    finished_at: float | None
    peers: tuple[str, ...]
    n: int | None
    alpha: float
    loss_before: float | None
    loss_after: float | None
    #: What the aggregation decided (fl.aggregate.AggregationRecord as stored), or why the
    #: round failed: free-form on purpose, the round history keeps every version's rows.
    record: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRequested:
    """``round.start`` without ``wait``: the scheduler starts a round now."""

    requested: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    id: str
    fingerprint: str
    key_changed_to: tuple[str, ...]
    name: str | None
    trust: str
    source: str
    addresses: tuple[str, ...]
    last_seen: float | None
    last_handshake: float | None
    #: Only the running node knows who is present (the ``peers`` RPC); ``parley peers list``
    #: reads the database alone and leaves it out.
    present: bool | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionView:
    id: int
    peer: str
    direction: str
    address: str
    started_at: float
    trust: str
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobView:
    id: str
    kind: str
    input: str
    status: str
    reason: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    outputs: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """The ``status`` RPC's answer."""

    node_id: str
    name: str
    version: str
    uptime_s: float
    listen: str
    model_version: str
    codec: CodecView
    last_round: RoundView | None
    round_running: int | None
    counts: StatusCounts
    connections: ConnectionStatsView
    limits: LimitsView
    job_running: JobProgressView | None
    #: The call service's own report (daemon.calls), passed through as it gives it.
    calls: dict[str, object] | None
    faults: FaultsView
    storage: StorageView
    key_changes: tuple[KeyChangeView, ...] = ()
    names_not_pinned: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """What ``parley status`` gathers from several RPC methods, and renders."""

    status: NodeStatus
    running: bool = True
    version: str | None = None
    peers: tuple[PeerView, ...] = ()
    sessions: tuple[SessionView, ...] = ()
    rounds: tuple[RoundView, ...] = ()
    jobs: tuple[JobView, ...] = ()


# -- from the records ----------------------------------------------------------------------


def round_view(record: RoundRecord) -> RoundView:
    return RoundView(
        round=record.round_number,
        status=record.status.value,
        started_at=record.started_at,
        finished_at=record.finished_at,
        peers=record.peers,
        n=record.n,
        alpha=record.alpha,
        loss_before=record.loss_before,
        loss_after=record.loss_after,
        record=dict(record.record),
    )


def key_change_views(changes: Iterable[KeyChangeEvent]) -> tuple[KeyChangeView, ...]:
    return tuple(
        KeyChangeView(
            name=change.name,
            pinned=fingerprint(change.pinned_key),
            offered=fingerprint(change.offered_key),
            offered_id=format_peer_id(change.offered_key),
            source=change.source.value,
            address=change.address,
            seen_at=change.seen_at,
        )
        for change in changes
    )


def peer_views(
    records: Iterable[PeerRecord],
    changes: Iterable[KeyChangeEvent] = (),
    *,
    present: Callable[[bytes], bool] | None = None,
) -> list[PeerView]:
    """The trust list as shown; ``present`` (the running node's) adds who is around now."""
    offers: dict[bytes, list[str]] = {}
    for change in changes:
        offers.setdefault(change.pinned_key, []).append(fingerprint(change.offered_key))
    return [
        PeerView(
            id=format_peer_id(record.public_key),
            fingerprint=fingerprint(record.public_key),
            key_changed_to=tuple(offers.get(record.public_key, [])),
            name=record.name,
            trust=record.trust.value,
            source=record.source.value,
            addresses=tuple(f"{host}:{port}" for host, port in record.addresses),
            last_seen=seen_at(record),
            last_handshake=record.last_handshake,
            present=None if present is None else present(record.public_key),
        )
        for record in records
    ]


# -- to and from the wire -------------------------------------------------------------------


def to_wire(view: object) -> Any:
    """A view (or a list of them) as plain maps and lists, keyed by field name."""
    if dataclasses.is_dataclass(view) and not isinstance(view, type):
        shown: dict[str, object] = {}
        for item in dataclasses.fields(view):
            value = getattr(view, item.name)
            if value is None and item.metadata.get("omit_if_none"):
                continue
            shown[item.name] = to_wire(value)
        return shown
    if isinstance(view, list | tuple):
        return [to_wire(item) for item in view]
    if isinstance(view, Mapping):
        return {key: to_wire(value) for key, value in view.items()}
    return view


T = TypeVar("T")


def from_wire(view: type[T], data: object) -> T:
    """``data`` (a decoded reply) as ``view``; raises :class:`ViewError` naming the field."""
    return typing.cast(T, _convert(view, data, view.__name__))


def _convert(kind: Any, value: object, where: str) -> object:
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _convert_dataclass(kind, value, where)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors: list[ViewError] = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ViewError as error:
                errors.append(error)
        raise errors[0] if errors else ViewError(f"{where}: unexpected null")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ViewError(f"{where}: expected a list, got {type(value).__name__}")
        (item_kind, _ellipsis) = typing.get_args(kind)
        return tuple(_convert(item_kind, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ViewError(f"{where}: expected a map, got {type(value).__name__}")
        _key_kind, value_kind = typing.get_args(kind)
        return {
            str(key): _convert(value_kind, item, f"{where}.{key}") for key, item in value.items()
        }
    return _convert_scalar(kind, value, where)


def _convert_scalar(kind: Any, value: object, where: str) -> object:
    if kind is object:
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise ViewError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r:.40}")


def _convert_dataclass(kind: type[Any], value: object, where: str) -> object:
    if not isinstance(value, Mapping):
        raise ViewError(f"{where}: expected a map, got {type(value).__name__}")
    hints = typing.get_type_hints(kind)
    arguments: dict[str, object] = {}
    for item in dataclasses.fields(kind):
        if item.name in value:
            arguments[item.name] = _convert(
                hints[item.name], value[item.name], f"{where}.{item.name}"
            )
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise ViewError(f"{where}: {item.name} is missing")
    return kind(**arguments)
