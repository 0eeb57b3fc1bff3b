"""Issue #11 item 3: trusting by name cannot end up trusting an attacker.

A neighbour floods the node with fresh keys until the merely-known peer "alice" is pruned, then
announces itself as "alice"; the user types ``parley peers trust alice``. Name pins must survive
the flood, and trusting by name must ask for the key's fingerprint.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from daemon.cli import main as parley_main
from daemon.database import PeerSource, PeerStore, TrustState, open_database
from daemon.peers import (
    KeyChangedError,
    PeerTable,
    fingerprint,
    format_peer_id,
    matches_fingerprint,
)
from daemon.trust_policy import TrustPolicy
from handshake.handshake import TrustDecision
from simulations.node_helpers import make_home, short_root

ALICE = bytes(range(32))
MALLORY = bytes(range(50, 82))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _flood(table: PeerTable, count: int) -> None:
    for index in range(count):
        table.record_handshake(
            index.to_bytes(4, "big") * 8, address=None, source=PeerSource.INBOUND
        )


def test_a_name_pin_survives_a_key_flood_and_the_attacker_cannot_take_the_name(tmp_path):
    with open_database(tmp_path / "node.db") as database:
        table = PeerTable(PeerStore(database), ttl=60.0, clock=Clock(), max_known=10)
        table.observe(ALICE, name="alice", address=("127.0.0.2", 7400), source=PeerSource.MDNS)
        _flood(table, 40)  # four times the bound on merely-known peers
        assert table.get(ALICE) is not None, "the flood pruned the peer that pins 'alice'"
        with pytest.raises(KeyChangedError):
            table.observe(
                MALLORY, name="alice", address=("127.0.0.66", 7400), source=PeerSource.MDNS
            )
        assert table.resolve("alice").public_key == ALICE
        # The bound on nameless strangers still holds.
        assert sum(1 for record in table.known() if record.name is None) <= 10


def test_pinned_names_are_bounded_without_releasing_any(tmp_path):
    with open_database(tmp_path / "node.db") as database:
        table = PeerTable(PeerStore(database), ttl=60.0, clock=Clock(), max_pinned_names=3)
        table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
        for index in range(10):
            key = bytes([index + 100]) * 32
            record = table.observe(key, name=f"n{index}", address=None, source=PeerSource.MDNS)
            assert record.name == (f"n{index}" if index < 2 else None)
        assert table.names_not_pinned == 8
        assert table.resolve("alice").public_key == ALICE


def test_fingerprint_matching():
    shown = fingerprint(ALICE)
    assert len(shown.replace("-", "")) == 16 and format_peer_id(ALICE).startswith(shown[:4])
    assert matches_fingerprint(ALICE, shown)
    assert matches_fingerprint(ALICE, shown.upper().replace("-", " "))
    assert matches_fingerprint(ALICE, format_peer_id(ALICE))
    assert not matches_fingerprint(ALICE, shown[:8])  # too short to mean anything
    assert not matches_fingerprint(MALLORY, shown)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        parley_main(list(args))
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _seed(home_root: Path, *, flood: int) -> None:
    """What the node records: alice seen by mDNS, then ``flood`` strangers, then mallory's
    announcement of "alice" (after a flood large enough to prune alice on today's code)."""
    with open_database(home_root / "node.db") as database:
        table = PeerTable(PeerStore(database), ttl=60.0, clock=Clock())
        table.observe(ALICE, name="alice", address=("127.0.0.2", 7400), source=PeerSource.MDNS)
        with database.transaction() as connection:  # the flood, in one go (as 10,001 handshakes)
            connection.executemany(
                "INSERT INTO peers (public_key, addresses, source, first_seen, last_seen, trust)"
                " VALUES (?, '[]', 'inbound', ?, ?, 'known')",
                [
                    (index.to_bytes(4, "big") * 8, 2e3 + index, 2e3 + index)
                    for index in range(flood)
                ],
            )
        table.record_handshake(b"\xee" * 32, address=None, source=PeerSource.INBOUND)  # prunes
        with contextlib.suppress(KeyChangedError):
            table.observe(
                MALLORY, name="alice", address=("127.0.0.66", 7400), source=PeerSource.MDNS
            )


def _trust_of(home_root: Path, key: bytes) -> TrustState | None:
    with open_database(home_root / "node.db") as database:
        record = PeerStore(database).get(key)
    return None if record is None else record.trust


def test_trust_by_name_after_a_key_flood_never_trusts_the_attacker(capsys):
    with short_root() as root:
        home, _ = make_home(root, "victim")
        _seed(home.root, flood=10_001)
        code, _out, err = _cli(capsys, "peers", "trust", "alice", "--home", str(home.root))
        assert code == 2, "trusting by name went ahead without the fingerprint"
        assert fingerprint(ALICE) in err and "--fingerprint" in err
        assert _trust_of(home.root, MALLORY) is not TrustState.TRUSTED
        # --yes cannot stand in for the fingerprint with a name.
        code, _out, err = _cli(capsys, "peers", "trust", "alice", "--yes", "--home", str(home.root))
        assert code == 2 and "full key" in err
        # The wrong fingerprint (the attacker's) is refused; the right one trusts alice.
        args = ("peers", "trust", "alice", "--home", str(home.root), "--fingerprint")
        code, _out, err = _cli(capsys, *args, fingerprint(MALLORY))
        assert code == 2 and _trust_of(home.root, MALLORY) is not TrustState.TRUSTED
        code, _out, err = _cli(capsys, *args, fingerprint(ALICE))
        assert code == 0, err
        assert _trust_of(home.root, ALICE) is TrustState.TRUSTED
        assert _trust_of(home.root, MALLORY) is not TrustState.TRUSTED
        # The full key needs no fingerprint; --yes is fine with it.
        code, _out, err = _cli(
            capsys, "peers", "trust", MALLORY.hex(), "--yes", "--home", str(home.root)
        )
        assert code == 0, err


def test_key_changes_are_listed_and_accept_key_block_forget_work(capsys):
    with short_root() as root:
        home, _ = make_home(root, "victim")
        _seed(home.root, flood=0)
        code, out, err = _cli(capsys, "peers", "list", "--json", "--home", str(home.root))
        assert code == 0, err
        rows = {row["name"]: row for row in json.loads(out)}
        assert rows["alice"]["key_changed_to"] == [fingerprint(MALLORY)]
        code, out, _err = _cli(capsys, "peers", "list", "--home", str(home.root))
        assert "accept-key" in out and "CHANGED" in out

        # The offered key can be blocked by the fingerprint shown (it has no row of its own).
        code, _out, err = _cli(
            capsys, "peers", "block", fingerprint(MALLORY), "--home", str(home.root)
        )
        assert code == 0, err
        assert _trust_of(home.root, MALLORY) is TrustState.BLOCKED
        code, _out, err = _cli(capsys, "peers", "untrust", MALLORY.hex(), "--home", str(home.root))
        assert code == 0, err

        # accept-key needs the new key's fingerprint.
        code, _out, err = _cli(capsys, "peers", "accept-key", "alice", "--home", str(home.root))
        assert code == 2 and fingerprint(MALLORY) in err
        code, _out, err = _cli(
            capsys,
            *("peers", "accept-key", "alice", "--home", str(home.root)),
            *("--fingerprint", fingerprint(MALLORY)),
        )
        assert code == 0, err
        with open_database(home.root / "node.db") as database:
            table = PeerTable(PeerStore(database), ttl=1.0)
            assert table.resolve("alice").public_key == MALLORY
            assert table.resolve("alice").trust is TrustState.KNOWN  # trusting is separate
            assert table.get(ALICE) is not None and table.get(ALICE).name is None
            assert table.pending_key_changes() == []

        # block: the blocked key's handshakes are refused by the trust policy.
        code, _out, err = _cli(capsys, "peers", "block", "alice", "--home", str(home.root))
        assert code == 0, err
        with open_database(home.root / "node.db") as database:
            policy = TrustPolicy(PeerTable(PeerStore(database), ttl=1.0), calls_from="known")
            assert policy.decide_initiator(MALLORY) is TrustDecision.REJECT
        # A never-seen key can be blocked in advance by its full key.
        stranger = b"\x42" * 32
        code, _out, err = _cli(capsys, "peers", "block", stranger.hex(), "--home", str(home.root))
        assert code == 0, err
        assert _trust_of(home.root, stranger) is TrustState.BLOCKED

        # forget by name needs the fingerprint as well (it frees the name).
        code, _out, err = _cli(capsys, "peers", "forget", "alice", "--home", str(home.root))
        assert code == 2 and fingerprint(MALLORY) in err
        code, _out, err = _cli(
            capsys,
            *("peers", "forget", "alice", "--home", str(home.root)),
            *("--fingerprint", fingerprint(MALLORY)),
        )
        assert code == 0, err
        assert _trust_of(home.root, MALLORY) is None
