"""How ``parley status`` and ``parley peers list`` look: rich tables from RPC results."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from daemon.database import KeyChangeEvent, PeerRecord
from daemon.peers import fingerprint, format_peer_id, seen_at


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


def key_change_offers(changes: Iterable[KeyChangeEvent]) -> dict[bytes, list[str]]:
    """Pinned key -> fingerprints of the other keys its name was announced with."""
    offers: dict[bytes, list[str]] = {}
    for change in changes:
        offers.setdefault(change.pinned_key, []).append(fingerprint(change.offered_key))
    return offers


def key_change_dicts(changes: Iterable[KeyChangeEvent]) -> list[dict[str, object]]:
    return [
        {
            "name": change.name,
            "pinned": fingerprint(change.pinned_key),
            "offered": fingerprint(change.offered_key),
            "offered_id": format_peer_id(change.offered_key),
            "source": change.source.value,
            "address": change.address,
            "seen_at": change.seen_at,
        }
        for change in changes
    ]


def peer_rows(
    records: Iterable[PeerRecord], changes: Iterable[KeyChangeEvent] = ()
) -> list[dict[str, object]]:
    offers = key_change_offers(changes)
    return [
        {
            "id": format_peer_id(record.public_key),
            "fingerprint": fingerprint(record.public_key),
            "key_changed_to": offers.get(record.public_key, []),
            "name": record.name,
            "trust": record.trust.value,
            "source": record.source.value,
            "addresses": [f"{host}:{port}" for host, port in record.addresses],
            "last_seen": seen_at(record),
            "last_handshake": record.last_handshake,
        }
        for record in records
    ]


def round_summary(result: object) -> str:
    """One line for ``parley round``: the round's outcome, or that one was requested."""
    if not isinstance(result, Mapping):
        return str(result)
    if result.get("requested"):
        return "round requested: the node starts it now ('parley status' shows it)"
    peers = result.get("peers") or []
    text = f"round {result.get('round')} {result.get('status')}: {len(peers)} peer(s)"
    before, after = result.get("loss_before"), result.get("loss_after")
    if isinstance(before, int | float) and isinstance(after, int | float):
        text += f", loss {before:.4f} -> {after:.4f}"
    return text


def render_peers(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table(title="Peers", title_justify="left")
    for column in ("id", "name", "trust", "source", "addresses", "seen", "handshake", "key"):
        table.add_column(column)
    for row in rows:
        offered = row.get("key_changed_to") or []
        table.add_row(
            str(row.get("fingerprint") or str(row["id"])[:16]),
            str(row.get("name") or "-"),
            str(row["trust"]),
            str(row["source"]),
            ", ".join(row.get("addresses") or []) or "-",
            _ago(row.get("last_seen")),
            _ago(row.get("last_handshake")),
            f"CHANGED? offered {', '.join(offered)}" if offered else "pinned",
        )
    if not rows:
        table.add_row("(none yet)", "", "", "", "", "", "", "")
    console.print(table)
    if any(row.get("key_changed_to") for row in rows):
        console.print(
            "A pinned name was announced with another key. If its owner confirms the new "
            "fingerprint: parley peers accept-key NAME --fingerprint FP; otherwise: "
            "parley peers block FP (the offered one)",
            highlight=False,
        )


def _last_round(last: Mapping[str, Any] | None) -> str:
    if not last:
        return "-"
    return (
        f"#{last['round']} {last['status']}, {len(last['peers'])} peers, "
        f"{_ago(last['finished_at'])}"
    )


def _calls(calls: Mapping[str, Any] | None) -> str:
    if not calls:
        return "-"
    text = f"{calls['active']} active (at most {calls['max']})"
    ringing = [c for c in calls.get("live") or [] if c.get("state") == "ringing"]
    for call in ringing:  # call.answer = "ask": 'parley answer ID' takes it
        text += f"; RINGING {call['call_id']} from {call['peer']}"
    recent = calls.get("recent") or []
    if recent:
        last = recent[-1]
        caption = ((last.get("latency") or {}).get("caption") or {}).get("p50_s")
        text += f"; last: {last['reason']}"
        if isinstance(caption, int | float):
            text += f", caption p50 {caption:.2f} s"
    return text


def _faults(faults: Mapping[str, Any] | None) -> str:
    if not faults or not faults.get("total"):
        return "none"
    by_type = faults.get("by_type") or {}
    return f"{faults['total']}: " + ", ".join(f"{k}={v}" for k, v in sorted(by_type.items()))


def _bytes(count: object) -> str:
    if not isinstance(count, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return "-"  # unreachable


def _storage(storage: Mapping[str, Any] | None) -> str:
    if not storage:
        return "-"
    limit = storage.get("max_bytes")
    text = f"{_bytes(storage.get('bytes_used'))} in {storage.get('folders', 0)} folders"
    text += f" (limit {_bytes(limit)}" if limit else " (no size limit"
    days = storage.get("keep_days")
    text += f", {days:g} days)" if days else ", no age limit)"
    if storage.get("deleted_folders"):
        text += f"; {storage['deleted_folders']} old folders deleted"
    return text


def _limits(limits: object) -> str:
    if not isinstance(limits, Mapping):
        return "-"
    return (
        f"sessions {limits.get('inbound_sessions')}/{limits.get('max_sessions')}, "
        f"half-open {limits.get('half_open')}/{limits.get('max_half_open')} "
        f"({limits.get('max_half_open_per_prefix')} per prefix)"
    )


def _key_changes(changes: object) -> str:
    if not isinstance(changes, list) or not changes:
        return "none"
    shown = "; ".join(
        f"{item['name']} pinned {item['pinned']}, offered {item['offered']}"
        for item in changes[:3]
        if isinstance(item, Mapping)
    )
    return f"{len(changes)} pending: {shown}" + ("; ..." if len(changes) > 3 else "")


def render_status(console: Console, report: Mapping[str, Any]) -> None:
    status = report["status"]
    summary = Table(title="Node", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    counts = status["counts"]
    codec = status["codec"]
    last = status.get("last_round")
    connections = status["connections"]
    rejected = connections.get("rejected") or {}
    for label, value in (
        ("id", status["node_id"]),
        ("name", status["name"]),
        ("uptime", _duration(status["uptime_s"])),
        ("listening", status["listen"]),
        ("model", f"{status['model_version']} ({codec['architecture']}, {codec['kbps']:.2f} kb/s)"),
        (
            "peers",
            f"{counts['peers_present']} present, {counts['peers_known']} known, "
            f"{counts['peers_trusted']} trusted",
        ),
        ("sessions", str(counts["sessions"])),
        (
            "rounds",
            f"{counts['rounds_completed']} completed"
            + (f", round {status['round_running']} running" if status["round_running"] else ""),
        ),
        ("last round", _last_round(last)),
        (
            "handshakes",
            f"{connections['handshakes_completed']} ok, {connections['handshakes_failed']} failed",
        ),
        ("rejected", ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "none"),
        ("jobs pending", str(counts["jobs_pending"])),
        ("calls", _calls(status.get("calls"))),
        ("calls+captions disk", _storage(status.get("storage"))),
        ("faults", _faults(status.get("faults"))),
        ("key changes", _key_changes(status.get("key_changes"))),
        ("limits", _limits(status.get("limits"))),
    ):
        summary.add_row(label, str(value))
    console.print(summary)
    render_peers(console, report.get("peers") or [])
    rounds = Table(title="Recent rounds", title_justify="left")
    for column in ("round", "status", "peers", "n", "loss before", "loss after", "finished"):
        rounds.add_column(column)
    for item in (report.get("rounds") or [])[:10]:
        rounds.add_row(
            str(item["round"]),
            str(item["status"]),
            str(len(item["peers"])),
            str(item["n"] or "-"),
            "-" if item["loss_before"] is None else f"{item['loss_before']:.4f}",
            "-" if item["loss_after"] is None else f"{item['loss_after']:.4f}",
            _ago(item["finished_at"]),
        )
    console.print(rounds)
    jobs = report.get("jobs") or []
    if jobs:
        table = Table(title="Jobs", title_justify="left")
        for column in ("id", "kind", "input", "status", "reason"):
            table.add_column(column)
        for job in jobs[:20]:
            table.add_row(
                str(job["id"])[:8],
                job["kind"],
                job["input"],
                job["status"],
                job.get("reason") or "",
            )
        console.print(table)
