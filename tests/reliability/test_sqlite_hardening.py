"""The node and the CLI share ``node.db``: neither may undo the other, and no SQLite error leaks
raw or leaves a connection unusable (issue 11, item 5)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from daemon.database import (
    DatabaseBusyError,
    DatabaseError,
    JobStore,
    PeerSource,
    PeerStore,
    TrustState,
    open_database,
)
from daemon.peers import PeerTable
from simulations.reliability.fault_scenarios import hold_write_lock

KEY = bytes(range(32))


class _CliTrustsMeanwhile(PeerStore):
    """The node's store, with ``parley peers trust`` (another connection) landing right after
    each read: the worst moment for a read-modify-write."""

    def __init__(self, database, cli_table: PeerTable) -> None:
        super().__init__(database)
        self._cli_table = cli_table

    def get(self, public_key):
        record = super().get(public_key)
        if record is not None:
            self._cli_table.trust(public_key.hex())
        return record


@pytest.mark.parametrize("what", ["handshake", "announcement"])
def test_the_node_never_undoes_a_trust_change_made_by_the_cli(tmp_path, what):
    path = tmp_path / "node.db"
    with open_database(path) as node_db, open_database(path) as cli_db:
        cli_table = PeerTable(PeerStore(cli_db), ttl=60)
        node_table = PeerTable(_CliTrustsMeanwhile(node_db, cli_table), ttl=60)
        node_table.observe(KEY, name="alice", address=("127.0.0.1", 1), source=PeerSource.MDNS)
        if what == "handshake":
            node_table.record_handshake(KEY, address=None, source=PeerSource.INBOUND)
        else:
            node_table.observe(KEY, name="alice", address=("127.0.0.1", 2), source=PeerSource.MDNS)
        stored = PeerStore(cli_db).get(KEY)
    assert stored is not None
    assert stored.trust is TrustState.TRUSTED


def test_a_locked_database_is_a_typed_error_and_the_connection_stays_usable(tmp_path, monkeypatch):
    monkeypatch.setattr("daemon.database.BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "node.db"
    with open_database(path) as database:
        jobs = JobStore(database)
        jobs.create(kind="caption", input_path="/a.wav", options={})
        with hold_write_lock(path, 2.0):
            with pytest.raises(DatabaseBusyError) as raised:
                jobs.claim_next()
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        # The lock is gone: the same connection works again (nothing was left open).
        claimed = jobs.claim_next()
        assert claimed is not None and claimed.status.value == "processing"


def test_a_failed_commit_is_rolled_back(tmp_path):
    path = tmp_path / "node.db"
    with open_database(path) as database:
        connection = database._connection
        # A deferred constraint fails at COMMIT time, not at the statement.
        connection.execute("PRAGMA foreign_keys = ON")
        with database.transaction() as conn:
            conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE child (parent INTEGER REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        with pytest.raises(DatabaseError), database.transaction() as conn:
            conn.execute("INSERT INTO child VALUES (7)")
        assert not connection.in_transaction
        # Later transactions work.
        with database.transaction() as conn:
            conn.execute("INSERT INTO parent VALUES (1)")
        started = time.monotonic()
        assert PeerStore(database).all() == []
        assert time.monotonic() - started < 5


async def test_an_outbound_handshake_is_recorded_off_the_event_loop():
    """Issue #11 item 4: ``exchange_bundles`` wrote the handshake to node.db on the event loop
    (up to the 5 s busy timeout when another process holds the lock)."""
    import threading

    from daemon.node import NodeOptions, open_node
    from simulations.node_helpers import loopback_config, make_home, short_root

    loop_thread = threading.get_ident()
    with short_root() as root:
        a_home, _ = make_home(root, "a")
        b_home, b_identity = make_home(root, "b")
        b_config = loopback_config(name="b", mdns=False).replace("trust", calls_from="anyone")
        async with open_node(b_home, b_config, NodeOptions(listen_port=0)) as b:
            static = (f"127.0.0.1:{b.listen_port}:{b_identity.public_key.hex()}",)
            a_config = loopback_config(name="a", mdns=False, static_peers=static)
            async with open_node(a_home, a_config, NodeOptions(listen_port=0)) as a:
                threads: list[int] = []
                real_record = a.peers.record_handshake

                def record_handshake(*args, **kwargs):
                    threads.append(threading.get_ident())
                    return real_record(*args, **kwargs)

                a.peers.record_handshake = record_handshake  # type: ignore[method-assign]
                record = a.peers.get(b_identity.public_key)
                assert record is not None
                await a.connections.exchange_bundles(record)
    assert threads and loop_thread not in threads, threads
