"""How ``parley status``, ``parley peers list`` and ``parley round`` look: rich tables and
lines from the typed views of :mod:`daemon.views` (the RPC's replies, read back with
:func:`~daemon.views.from_wire`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from daemon.views import (
    FaultsView,
    KeyChangeView,
    LimitsView,
    PeerView,
    RoundRequested,
    RoundView,
    StatusReport,
    StorageView,
    from_wire,
)


def _ago(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "never"
    seconds = max(0.0, time.time() - stamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def round_summary(result: object) -> str:
    """One line for ``parley round``: the round's outcome, or that one was requested."""
    requested = isinstance(result, Mapping) and "requested" in result
    if requested and from_wire(RoundRequested, result).requested:
        return "round requested: the node starts it now ('parley status' shows it)"
    shown = from_wire(RoundView, result)
    text = f"round {shown.round} {shown.status}: {len(shown.peers)} peer(s)"
    if shown.loss_before is not None and shown.loss_after is not None:
        text += f", loss {shown.loss_before:.4f} -> {shown.loss_after:.4f}"
    return text


def render_peers(console: Console, rows: Sequence[PeerView]) -> None:
    table = Table(title="Peers", title_justify="left")
    for column in ("id", "name", "trust", "source", "addresses", "seen", "handshake", "key"):
        table.add_column(column)
    for row in rows:
        offered = row.key_changed_to
        table.add_row(
            row.fingerprint or row.id[:16],
            row.name or "-",
            row.trust,
            row.source,
            ", ".join(row.addresses) or "-",
            _ago(row.last_seen),
            _ago(row.last_handshake),
            f"CHANGED? offered {', '.join(offered)}" if offered else "pinned",
        )
    if not rows:
        table.add_row("(none yet)", "", "", "", "", "", "", "")
    console.print(table)
    if any(row.key_changed_to for row in rows):
        console.print(
            "A pinned name was announced with another key. If its owner confirms the new "
            "fingerprint: parley peers accept-key NAME --fingerprint FP; otherwise: "
            "parley peers block FP (the offered one)",
            highlight=False,
        )


def _last_round(last: RoundView | None) -> str:
    if last is None:
        return "-"
    return f"#{last.round} {last.status}, {len(last.peers)} peers, {_ago(last.finished_at)}"


def _calls(calls: Mapping[str, Any] | None) -> str:
    if not calls:
        return "-"
    text = f"{calls['active']} active (at most {calls['max']})"
    recent = calls.get("recent") or []
    if recent:
        last = recent[-1]
        caption = ((last.get("latency") or {}).get("caption") or {}).get("p50_s")
        text += f"; last: {last['reason']}"
        if isinstance(caption, int | float):
            text += f", caption p50 {caption:.2f} s"
    return text


def _faults(faults: FaultsView) -> str:
    if not faults.total:
        return "none"
    return f"{faults.total}: " + ", ".join(f"{k}={v}" for k, v in sorted(faults.by_type.items()))


def _bytes(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return "-"  # unreachable


def _storage(storage: StorageView) -> str:
    text = f"{_bytes(storage.bytes_used)} in {storage.folders} folders"
    text += f" (limit {_bytes(storage.max_bytes)}" if storage.max_bytes else " (no size limit"
    days = storage.keep_days
    text += f", {days:g} days)" if days else ", no age limit)"
    if storage.deleted_folders:
        text += f"; {storage.deleted_folders} old folders deleted"
    return text


def _limits(limits: LimitsView) -> str:
    return (
        f"sessions {limits.inbound_sessions}/{limits.max_sessions}, "
        f"half-open {limits.half_open}/{limits.max_half_open} "
        f"({limits.max_half_open_per_prefix} per prefix)"
    )


def _key_changes(changes: Sequence[KeyChangeView]) -> str:
    if not changes:
        return "none"
    shown = "; ".join(
        f"{item.name} pinned {item.pinned}, offered {item.offered}" for item in changes[:3]
    )
    return f"{len(changes)} pending: {shown}" + ("; ..." if len(changes) > 3 else "")


def render_status(console: Console, report: StatusReport | Mapping[str, Any]) -> None:
    """``parley status``: ``report`` as gathered from the RPC (a map is read as a
    :class:`~daemon.views.StatusReport` first; a reply of the wrong shape is a ViewError)."""
    if not isinstance(report, StatusReport):
        report = from_wire(StatusReport, report)
    status = report.status
    summary = Table(title="Node", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    counts, codec, connections = status.counts, status.codec, status.connections
    rejected = connections.rejected
    running = f", round {status.round_running} running" if status.round_running else ""
    for label, value in (
        ("id", status.node_id),
        ("name", status.name),
        ("uptime", _duration(status.uptime_s)),
        ("listening", status.listen),
        ("model", f"{status.model_version} ({codec.architecture}, {codec.kbps:.2f} kb/s)"),
        (
            "peers",
            f"{counts.peers_present} present, {counts.peers_known} known, "
            f"{counts.peers_trusted} trusted",
        ),
        ("sessions", str(counts.sessions)),
        ("rounds", f"{counts.rounds_completed} completed{running}"),
        ("last round", _last_round(status.last_round)),
        (
            "handshakes",
            f"{connections.handshakes_completed} ok, {connections.handshakes_failed} failed",
        ),
        ("rejected", ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "none"),
        ("jobs pending", str(counts.jobs_pending)),
        ("calls", _calls(status.calls)),
        ("calls+captions disk", _storage(status.storage)),
        ("faults", _faults(status.faults)),
        ("key changes", _key_changes(status.key_changes)),
        ("limits", _limits(status.limits)),
    ):
        summary.add_row(label, str(value))
    console.print(summary)
    render_peers(console, report.peers)
    rounds = Table(title="Recent rounds", title_justify="left")
    for column in ("round", "status", "peers", "n", "loss before", "loss after", "finished"):
        rounds.add_column(column)
    for item in report.rounds[:10]:
        rounds.add_row(
            str(item.round),
            item.status,
            str(len(item.peers)),
            str(item.n or "-"),
            "-" if item.loss_before is None else f"{item.loss_before:.4f}",
            "-" if item.loss_after is None else f"{item.loss_after:.4f}",
            _ago(item.finished_at),
        )
    console.print(rounds)
    if report.jobs:
        table = Table(title="Jobs", title_justify="left")
        for column in ("id", "kind", "input", "status", "reason"):
            table.add_column(column)
        for job in report.jobs[:20]:
            table.add_row(job.id[:8], job.kind, job.input, job.status, job.reason or "")
        console.print(table)
