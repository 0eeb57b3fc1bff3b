"""The node's one SQLite database (``node.db`` in the node home): peers, FL rounds, caption jobs.

Theory of operation
-------------------
SQLite gives the crash safety docs/design.md asks for ("Storage and crash safety") without
hand-rolled temp-file dances: the database runs in WAL mode with ``synchronous=FULL``, so a
committed transaction survives a ``kill -9`` or a power cut, and an interrupted one is rolled back
on the next open.

The schema is versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` is an append-only list,
entry *i* takes the schema from version *i* to *i + 1*, and :func:`open_database` applies the
missing ones inside one transaction each. A file written by a newer parley (a version we do not
know) is refused rather than guessed at.

The three repositories (:class:`PeerStore`, :class:`RoundStore`, :class:`JobStore`) are small and
synchronous: each call is one short transaction, safe to call from a worker thread
(``trio.to_thread.run_sync``, which the node does on its connection, round, job and RPC paths:
another process holding the lock can make a write wait up to the busy timeout) because every
transaction holds its connection's lock. Writes go through one connection and take SQLite's
write lock up front (``BEGIN IMMEDIATE``); reads use a second connection and, in WAL mode, never
wait for a writer. A failed statement or COMMIT is rolled back, and every ``sqlite3.Error`` is
translated into :class:`DatabaseError` or a subclass chosen by SQLite's result code
(:class:`DatabaseBusyError`, :class:`DatabaseFullError`, :class:`DatabaseCorruptError`). Peer
rows are updated column by column (:meth:`PeerStore.update_presence`,
:meth:`PeerStore.set_trust`): the node never writes ``trust`` while recording a handshake or an
announcement, so it cannot undo a ``parley peers trust`` made meanwhile by the CLI. Rows come back
as frozen dataclasses, never as tuples.

Job status is a small state machine (:data:`JOB_TRANSITIONS`): ``pending → processing →
ready | failed``. A job found in ``processing`` when the node starts was interrupted by a crash:
:meth:`JobStore.recover_interrupted` puts it back to ``pending`` (the node calls it once at
startup, before any worker runs). Rounds found ``running`` at startup are marked ``abandoned`` the
same way, since a half-done round cannot be resumed.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.closing import ClosedOnExit
from daemon.errors import DaemonError
from daemon.trust import TrustState

__all__ = [
    "DATABASE_FILENAME",
    "JOB_TRANSITIONS",
    "MAX_KEY_CHANGE_EVENTS",
    "MIGRATIONS",
    "PUBLIC_KEY_BYTES",
    "Database",
    "DatabaseBusyError",
    "DatabaseCorruptError",
    "DatabaseError",
    "DatabaseFullError",
    "JobRecord",
    "JobStateError",
    "JobStatus",
    "JobStore",
    "KeyChangeEvent",
    "PeerRecord",
    "PeerSource",
    "PeerStore",
    "RoundRecord",
    "RoundStatus",
    "RoundStore",
    "TrustState",
    "open_database",
]

DATABASE_FILENAME = "node.db"
PUBLIC_KEY_BYTES = 32
# How long a writer waits for another connection's lock before failing (another process, e.g. a
# CLI reading the db while the node writes; WAL lets readers proceed anyway).
BUSY_TIMEOUT_MS = 5000
# Key-change events kept for the user to review (a neighbour re-announcing a changed key every
# minute for months must not grow the file).
MAX_KEY_CHANGE_EVENTS = 1000

Clock = Callable[[], float]


class DatabaseError(DaemonError):
    """The database file cannot be used; the message is one line and names the file.

    Every ``sqlite3.Error`` leaving this module is translated into this class or one of its
    subclasses (chosen by SQLite's result code, never by message text), with the original in
    ``__cause__``.
    """


class DatabaseBusyError(DatabaseError):
    """Another connection (a CLI, another process) held the lock past the busy timeout."""


class DatabaseFullError(DatabaseError):
    """The disk (or the file system quota) is full."""


class DatabaseCorruptError(DatabaseError):
    """The file is damaged or not a database; ``parley doctor`` says what to do."""


# SQLite primary result codes (https://www.sqlite.org/rescode.html).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26


def translate_error(path: Path, exc: sqlite3.Error) -> DatabaseError:
    """The typed error for ``exc`` (raise it ``from exc``)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = _describe(path, exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DatabaseBusyError(message)
    if primary == _SQLITE_FULL:
        return DatabaseFullError(message)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DatabaseCorruptError(f"{message}; run 'parley doctor' to check the home")
    return DatabaseError(message)


class JobStateError(DatabaseError):
    """A job status change the state machine forbids (or an unknown job id)."""


class PeerSource(enum.StrEnum):
    """How we last learned of a peer."""

    MDNS = "mdns"
    STATIC = "static"
    INBOUND = "inbound"


class RoundStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.PROCESSING, JobStatus.FAILED}),
    # processing → pending is crash recovery only (recover_interrupted).
    JobStatus.PROCESSING: frozenset({JobStatus.READY, JobStatus.FAILED, JobStatus.PENDING}),
    JobStatus.READY: frozenset(),
    JobStatus.FAILED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class PeerRecord:
    public_key: bytes
    name: str | None
    addresses: tuple[tuple[str, int], ...]
    source: PeerSource
    first_seen: float
    last_seen: float
    last_handshake: float | None
    trust: TrustState

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"peer public key must be {PUBLIC_KEY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class KeyChangeEvent:
    """A known name announced with a different key: refused and kept for the user to see."""

    event_id: int
    name: str
    pinned_key: bytes
    offered_key: bytes
    source: PeerSource
    address: str | None
    seen_at: float


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One FL round as the history keeps it; ``record`` is what its aggregation decided
    (fl.aggregate.AggregationRecord as JSON, plus the node's figures) or why it failed."""

    round_number: int
    started_at: float
    finished_at: float | None
    status: RoundStatus
    peers: tuple[str, ...]
    n: int | None
    alpha: float
    loss_before: float | None
    loss_after: float | None
    record: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    kind: str
    input_path: str
    options: Mapping[str, object]
    status: JobStatus
    reason: str | None
    created_at: float
    updated_at: float
    outputs: Mapping[str, object]


_MIGRATION_1 = (
    """
    CREATE TABLE peers (
        public_key BLOB PRIMARY KEY CHECK (length(public_key) = 32),
        name TEXT,
        addresses TEXT NOT NULL DEFAULT '[]',
        source TEXT NOT NULL CHECK (source IN ('mdns', 'static', 'inbound')),
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        last_handshake REAL,
        trust TEXT NOT NULL CHECK (trust IN ('trusted', 'known', 'blocked'))
    ) STRICT
    """,
    "CREATE INDEX peers_by_name ON peers (name)",
    """
    CREATE TABLE key_changes (
        event_id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        pinned_key BLOB NOT NULL,
        offered_key BLOB NOT NULL,
        source TEXT NOT NULL,
        address TEXT,
        seen_at REAL NOT NULL
    ) STRICT
    """,
    """
    CREATE TABLE rounds (
        round_number INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'abandoned')),
        peers TEXT NOT NULL DEFAULT '[]',
        n INTEGER,
        alpha REAL NOT NULL,
        loss_before REAL,
        loss_after REAL,
        record TEXT NOT NULL DEFAULT '{}'
    ) STRICT
    """,
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        input_path TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'ready', 'failed')),
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        outputs TEXT NOT NULL DEFAULT '{}'
    ) STRICT
    """,
    "CREATE INDEX jobs_by_status ON jobs (status, created_at)",
)


# Append-only: never edit a shipped migration, add a new one. Each is a tuple of single SQL
# statements run with execute(), not executescript(), which would COMMIT our transaction early.
MIGRATIONS: Sequence[Sequence[str]] = (_MIGRATION_1,)


class Database(ClosedOnExit):
    """One open ``node.db``. Use :func:`open_database`; close it (or use ``with``) when done."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        reader: sqlite3.Connection | None = None,
    ) -> None:
        self._connection = connection
        self._lock = threading.RLock()
        # Reads get a connection of their own: in WAL mode they never wait for a writer, so a
        # write stuck behind another process's lock (up to the busy timeout) delays no status.
        self._reader = reader
        self._reader_lock = threading.RLock()
        self.path = path

    def close(self) -> None:
        with self._lock:
            self._connection.close()
        if self._reader is not None:
            with self._reader_lock:
                self._reader.close()

    @property
    def schema_version(self) -> int:
        with self.transaction(write=False) as connection:
            return int(connection.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on any exception.

        Writers take SQLite's write lock up front (``BEGIN IMMEDIATE``) so a read-then-write
        cannot fail half-way with SQLITE_BUSY; readers use a deferred one, on the reading
        connection, and never wait for a writer.
        """
        if not write and self._reader is not None:
            with self._reader_lock:
                try:
                    self._reader.execute("BEGIN")
                except sqlite3.Error as exc:
                    raise translate_error(self.path, exc) from exc
                try:
                    yield self._reader
                except sqlite3.Error as exc:
                    _rollback(self._reader)
                    raise translate_error(self.path, exc) from exc
                except BaseException:
                    _rollback(self._reader)
                    raise
                try:
                    self._reader.execute("COMMIT")
                except sqlite3.Error as exc:
                    _rollback(self._reader)
                    raise translate_error(self.path, exc) from exc
            return
        with self._lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise translate_error(self.path, exc) from exc
            try:
                yield self._connection
            except sqlite3.Error as exc:
                self._rollback()
                raise translate_error(self.path, exc) from exc
            except BaseException:
                self._rollback()
                raise
            try:
                self._connection.execute("COMMIT")
            except sqlite3.Error as exc:
                # A failed COMMIT (SQLITE_BUSY, a full disk) can leave the transaction open;
                # without this rollback every later BEGIN fails on this connection.
                self._rollback()
                raise translate_error(self.path, exc) from exc

    def _rollback(self) -> None:
        _rollback(self._connection)


def _rollback(connection: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors; a ROLLBACK then has nothing to end.
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.replace("*", " ").split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(path: Path, exc: sqlite3.Error) -> str:
    reason = _one_line(str(exc)) or type(exc).__name__
    return f"{path}: cannot use the node database ({reason})"


def open_database(path: Path) -> Database:
    """Open (creating if needed) and migrate the database at ``path``.

    Raises :class:`DatabaseError` with a one-line message naming the file when it is corrupt,
    not a database, unreadable, or from a newer parley.
    """
    try:
        # SQLite creates the file with the process umask (0644), and its -wal/-shm files copy
        # the database file's mode: create it private first.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise DatabaseError(f"{path}: {exc.strerror or exc}") from exc
    try:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise translate_error(path, exc) from exc
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # journal_mode answers with the mode actually in force; WAL can be refused (e.g. on some
        # network filesystems) and then the crash-safety promise would silently not hold.
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise DatabaseError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        # quick_check reads every page: catches a damaged file at startup, not mid-round.
        check = str(connection.execute("PRAGMA quick_check").fetchone()[0])
        if check != "ok":
            raise DatabaseCorruptError(
                f"{path}: the node database is corrupt ({_one_line(check)}); "
                "run 'parley doctor' to check the home"
            )
        database = Database(connection, path)
        _migrate(database)
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error:
            reader.close()
            raise
        database = Database(connection, path, reader=reader)
    except sqlite3.Error as exc:
        connection.close()
        raise translate_error(path, exc) from exc
    except BaseException:
        connection.close()
        raise
    return database


def _migrate(database: Database) -> None:
    with database.transaction() as connection:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise DatabaseError(
                f"{database.path}: schema version {version} is newer than this parley "
                f"understands ({len(MIGRATIONS)}); upgrade parley"
            )
        for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                connection.execute(statement)
            # PRAGMA takes no bound parameters; target is our own int.
            connection.execute(f"PRAGMA user_version = {int(target)}")


def _dump_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _load_mapping(text: str) -> Mapping[str, object]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise DatabaseError(f"expected a JSON object in the database, got {type(value).__name__}")
    return value


class PeerStore:
    """Persistent peer records and key-change events (the known-peers/trust list)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def upsert(self, record: PeerRecord) -> None:
        with self._database.transaction() as connection:
            connection.execute(
                """
                INSERT INTO peers (public_key, name, addresses, source, first_seen, last_seen,
                                   last_handshake, trust)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (public_key) DO UPDATE SET
                    name = excluded.name, addresses = excluded.addresses,
                    source = excluded.source, first_seen = excluded.first_seen,
                    last_seen = excluded.last_seen, last_handshake = excluded.last_handshake,
                    trust = excluded.trust
                """,
                _peer_row(record),
            )

    def insert_new(self, record: PeerRecord) -> bool:
        """Add a peer seen for the first time; False (nothing written) if it is already known."""
        with self._database.transaction() as connection:
            cursor = connection.execute(
                """
                INSERT INTO peers (public_key, name, addresses, source, first_seen, last_seen,
                                   last_handshake, trust)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (public_key) DO NOTHING
                """,
                _peer_row(record),
            )
        return cursor.rowcount == 1

    def update_presence(
        self,
        public_key: bytes,
        *,
        name: str | None,
        addresses: tuple[tuple[str, int], ...],
        source: PeerSource | None,
        last_seen: float,
        last_handshake: float | None = None,
    ) -> None:
        """Update what discovery and handshakes learn; never ``trust`` (column-level update,
        so a concurrent ``parley peers trust`` from the CLI is never undone). ``name`` and
        ``source`` None keep the stored value, ``last_handshake`` None too."""
        with self._database.transaction() as connection:
            connection.execute(
                """
                UPDATE peers SET name = coalesce(?, name), addresses = ?,
                                 source = coalesce(?, source), last_seen = ?,
                                 last_handshake = coalesce(?, last_handshake)
                WHERE public_key = ?
                """,
                (
                    name,
                    _dump_json([list(address) for address in addresses]),
                    None if source is None else source.value,
                    last_seen,
                    last_handshake,
                    public_key,
                ),
            )

    def set_trust(self, public_key: bytes, trust: TrustState) -> bool:
        """Change only the trust column; False if the peer is not in the list."""
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE peers SET trust = ? WHERE public_key = ?", (trust.value, public_key)
            )
        return cursor.rowcount == 1

    def get(self, public_key: bytes) -> PeerRecord | None:
        with self._database.transaction(write=False) as connection:
            row = connection.execute(
                "SELECT * FROM peers WHERE public_key = ?", (public_key,)
            ).fetchone()
        return None if row is None else _peer_from_row(row)

    def find_by_name(self, name: str) -> list[PeerRecord]:
        with self._database.transaction(write=False) as connection:
            rows = connection.execute(
                "SELECT * FROM peers WHERE name = ? ORDER BY first_seen", (name,)
            ).fetchall()
        return [_peer_from_row(row) for row in rows]

    def all(self) -> list[PeerRecord]:
        with self._database.transaction(write=False) as connection:
            rows = connection.execute("SELECT * FROM peers ORDER BY first_seen").fetchall()
        return [_peer_from_row(row) for row in rows]

    def delete(self, public_key: bytes) -> bool:
        with self._database.transaction() as connection:
            cursor = connection.execute("DELETE FROM peers WHERE public_key = ?", (public_key,))
        return cursor.rowcount > 0

    def prune_known(self, keep: int) -> int:
        """Forget the least recently seen ``known`` peers beyond ``keep`` (static peers, trusted
        and blocked ones, and any row that pins a name, are never forgotten); return how many
        went."""
        with self._database.transaction() as connection:
            cursor = connection.execute(
                """
                DELETE FROM peers WHERE public_key IN (
                    SELECT public_key FROM peers
                    WHERE trust = 'known' AND source != 'static' AND name IS NULL
                    ORDER BY last_seen DESC LIMIT -1 OFFSET ?
                )
                """,
                (keep,),
            )
        return cursor.rowcount

    def count_named(self) -> int:
        """Rows that pin a name."""
        with self._database.transaction(write=False) as connection:
            row = connection.execute("SELECT count(*) FROM peers WHERE name IS NOT NULL").fetchone()
        return int(row[0])

    def delete_key_changes(self, name: str) -> int:
        """Drop the key-change events of ``name`` (the user decided on them)."""
        with self._database.transaction() as connection:
            cursor = connection.execute("DELETE FROM key_changes WHERE name = ?", (name,))
        return cursor.rowcount

    def record_key_change(
        self,
        *,
        name: str,
        pinned_key: bytes,
        offered_key: bytes,
        source: PeerSource,
        address: str | None,
        seen_at: float,
    ) -> KeyChangeEvent:
        """Record that ``name`` was offered with another key. The same offer seen again (a
        re-announcement) refreshes its event instead of adding one; at most
        :data:`MAX_KEY_CHANGE_EVENTS` events are kept, the oldest go first."""
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT event_id FROM key_changes WHERE name = ? AND pinned_key = ? "
                "AND offered_key = ? ORDER BY event_id DESC LIMIT 1",
                (name, pinned_key, offered_key),
            ).fetchone()
            if row is not None:
                event_id = int(row[0])
                connection.execute(
                    "UPDATE key_changes SET source = ?, address = ?, seen_at = ? "
                    "WHERE event_id = ?",
                    (source.value, address, seen_at, event_id),
                )
            else:
                cursor = connection.execute(
                    """
                    INSERT INTO key_changes (name, pinned_key, offered_key, source, address,
                                             seen_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                    (name, pinned_key, offered_key, source.value, address, seen_at),
                )
                assert cursor.lastrowid is not None  # AUTOINCREMENT always sets it
                event_id = cursor.lastrowid
                connection.execute(
                    "DELETE FROM key_changes WHERE event_id <= ?",
                    (event_id - MAX_KEY_CHANGE_EVENTS,),
                )
        return KeyChangeEvent(
            event_id=event_id,
            name=name,
            pinned_key=pinned_key,
            offered_key=offered_key,
            source=source,
            address=address,
            seen_at=seen_at,
        )

    def key_changes(self, *, limit: int = 100) -> list[KeyChangeEvent]:
        with self._database.transaction(write=False) as connection:
            rows = connection.execute(
                "SELECT event_id, name, pinned_key, offered_key, source, address, seen_at "
                "FROM key_changes ORDER BY event_id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            KeyChangeEvent(
                event_id=row[0],
                name=row[1],
                pinned_key=bytes(row[2]),
                offered_key=bytes(row[3]),
                source=PeerSource(row[4]),
                address=row[5],
                seen_at=row[6],
            )
            for row in rows
        ]


def _peer_from_row(row: Sequence[object]) -> PeerRecord:
    public_key, name, addresses, source, first_seen, last_seen, last_handshake, trust = row
    assert isinstance(public_key, bytes) and isinstance(addresses, str)
    assert isinstance(source, str) and isinstance(trust, str)
    assert isinstance(first_seen, float) and isinstance(last_seen, float)
    assert name is None or isinstance(name, str)
    assert last_handshake is None or isinstance(last_handshake, float)
    return PeerRecord(
        public_key=public_key,
        name=name,
        addresses=tuple((str(host), int(port)) for host, port in json.loads(addresses)),
        source=PeerSource(source),
        first_seen=first_seen,
        last_seen=last_seen,
        last_handshake=last_handshake,
        trust=TrustState(trust),
    )


class RoundStore:
    """The FL round history: one row per round, begun then finished."""

    def __init__(self, database: Database, *, clock: Clock = time.time) -> None:
        self._database = database
        self._clock = clock

    def begin(self, *, alpha: float, peers: Sequence[str]) -> RoundRecord:
        """Start the next round (numbers are consecutive from 1) and return its record."""
        now = self._clock()
        with self._database.transaction() as connection:
            (last,) = connection.execute("SELECT max(round_number) FROM rounds").fetchone()
            round_number = 1 if last is None else int(last) + 1
            connection.execute(
                "INSERT INTO rounds (round_number, started_at, status, peers, alpha) "
                "VALUES (?, ?, ?, ?, ?)",
                (round_number, now, RoundStatus.RUNNING.value, _dump_json(list(peers)), alpha),
            )
        record = self.get(round_number)
        assert record is not None
        return record

    def finish(
        self,
        round_number: int,
        *,
        status: RoundStatus,
        peers: Sequence[str],
        n: int | None,
        loss_before: float | None,
        loss_after: float | None,
        record: Mapping[str, object],
    ) -> RoundRecord:
        if status is RoundStatus.RUNNING:
            raise ValueError("finish() needs a final status, not running")
        with self._database.transaction() as connection:
            cursor = connection.execute(
                """
                UPDATE rounds SET finished_at = ?, status = ?, peers = ?, n = ?,
                                  loss_before = ?, loss_after = ?, record = ?
                WHERE round_number = ? AND status = 'running'
                """,
                (
                    self._clock(),
                    status.value,
                    _dump_json(list(peers)),
                    n,
                    loss_before,
                    loss_after,
                    _dump_json(dict(record)),
                    round_number,
                ),
            )
            if cursor.rowcount != 1:
                raise DatabaseError(f"round {round_number} is not running")
        result = self.get(round_number)
        assert result is not None
        return result

    def get(self, round_number: int) -> RoundRecord | None:
        with self._database.transaction(write=False) as connection:
            row = connection.execute(
                "SELECT * FROM rounds WHERE round_number = ?", (round_number,)
            ).fetchone()
        return None if row is None else _round_from_row(row)

    def recent(self, *, limit: int = 20) -> list[RoundRecord]:
        """The latest ``limit`` rounds, newest first."""
        with self._database.transaction(write=False) as connection:
            rows = connection.execute(
                "SELECT * FROM rounds ORDER BY round_number DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_round_from_row(row) for row in rows]

    def count(self, *, status: RoundStatus) -> int:
        """How many rounds ended in ``status`` (for the status RPC: no rows are loaded)."""
        with self._database.transaction(write=False) as connection:
            (number,) = connection.execute(
                "SELECT count(*) FROM rounds WHERE status = ?", (status.value,)
            ).fetchone()
        return int(number)

    def abandon_interrupted(self) -> int:
        """Mark rounds left ``running`` by a crash as ``abandoned``; call once at startup."""
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE rounds SET status = 'abandoned', finished_at = ? WHERE status = 'running'",
                (self._clock(),),
            )
        return cursor.rowcount


def _peer_row(record: PeerRecord) -> tuple[object, ...]:
    """A peer record as the ``peers`` table's columns, in their order."""
    return (
        record.public_key,
        record.name,
        _dump_json([list(address) for address in record.addresses]),
        record.source.value,
        record.first_seen,
        record.last_seen,
        record.last_handshake,
        record.trust.value,
    )


def _round_from_row(row: Sequence[object]) -> RoundRecord:
    (round_number, started_at, finished_at, status, peers, n, alpha, before, after, record) = row
    assert isinstance(round_number, int) and isinstance(started_at, float)
    assert isinstance(status, str) and isinstance(peers, str) and isinstance(record, str)
    assert isinstance(alpha, float)
    assert finished_at is None or isinstance(finished_at, float)
    assert n is None or isinstance(n, int)
    assert before is None or isinstance(before, float)
    assert after is None or isinstance(after, float)
    return RoundRecord(
        round_number=round_number,
        started_at=started_at,
        finished_at=finished_at,
        status=RoundStatus(status),
        peers=tuple(str(peer) for peer in json.loads(peers)),
        n=n,
        alpha=alpha,
        loss_before=before,
        loss_after=after,
        record=_load_mapping(record),
    )


class JobStore:
    """Caption jobs and their status machine (see :data:`JOB_TRANSITIONS`)."""

    def __init__(self, database: Database, *, clock: Clock = time.time) -> None:
        self._database = database
        self._clock = clock

    def create(self, *, kind: str, input_path: str, options: Mapping[str, object]) -> JobRecord:
        job_id = uuid.uuid4().hex
        now = self._clock()
        with self._database.transaction() as connection:
            connection.execute(
                "INSERT INTO jobs (job_id, kind, input_path, options, status, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (job_id, kind, input_path, _dump_json(dict(options)), now, now),
            )
        return self._require(job_id)

    def get(self, job_id: str) -> JobRecord | None:
        with self._database.transaction(write=False) as connection:
            row = connection.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def list(self, *, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        """Jobs oldest first, optionally only those in ``status``."""
        with self._database.transaction(write=False) as connection:
            if status is None:
                rows = connection.execute(
                    "SELECT * FROM jobs ORDER BY created_at, job_id LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = connection.execute(
                    "SELECT * FROM jobs WHERE status = ? ORDER BY created_at, job_id LIMIT ?",
                    (status.value, limit),
                ).fetchall()
        return [_job_from_row(row) for row in rows]

    def count(self, *, status: JobStatus) -> int:
        """How many jobs are in ``status`` (for the status RPC: no rows are loaded)."""
        with self._database.transaction(write=False) as connection:
            (number,) = connection.execute(
                "SELECT count(*) FROM jobs WHERE status = ?", (status.value,)
            ).fetchone()
        return int(number)

    def claim_next(self) -> JobRecord | None:
        """Move the oldest pending job to ``processing`` and return it (atomically)."""
        with self._database.transaction() as connection:
            row = connection.execute(
                "SELECT job_id FROM jobs WHERE status = 'pending' "
                "ORDER BY created_at, job_id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            self._move(connection, row[0], JobStatus.PROCESSING, reason=None, outputs=None)
        return self._require(row[0])

    def mark_ready(self, job_id: str, *, outputs: Mapping[str, object]) -> JobRecord:
        with self._database.transaction() as connection:
            self._move(connection, job_id, JobStatus.READY, reason=None, outputs=outputs)
        return self._require(job_id)

    def mark_failed(self, job_id: str, *, reason: str) -> JobRecord:
        with self._database.transaction() as connection:
            self._move(connection, job_id, JobStatus.FAILED, reason=reason, outputs=None)
        return self._require(job_id)

    def recover_interrupted(self) -> int:
        """Put jobs a crash left in ``processing`` back to ``pending``; call once at startup."""
        with self._database.transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET status = 'pending', updated_at = ? WHERE status = 'processing'",
                (self._clock(),),
            )
        return cursor.rowcount

    def _move(
        self,
        connection: sqlite3.Connection,
        job_id: str,
        target: JobStatus,
        *,
        reason: str | None,
        outputs: Mapping[str, object] | None,
    ) -> None:
        row = connection.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobStateError(f"no job with id {job_id!r}")
        current = JobStatus(row[0])
        if target not in JOB_TRANSITIONS[current]:
            raise JobStateError(f"job {job_id} cannot go from {current} to {target}")
        connection.execute(
            "UPDATE jobs SET status = ?, reason = ?, updated_at = ?, "
            "outputs = coalesce(?, outputs) WHERE job_id = ?",
            (
                target.value,
                reason,
                self._clock(),
                None if outputs is None else _dump_json(dict(outputs)),
                job_id,
            ),
        )

    def _require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise JobStateError(f"no job with id {job_id!r}")
        return record


def _job_from_row(row: Sequence[object]) -> JobRecord:
    job_id, kind, input_path, options, status, reason, created_at, updated_at, outputs = row
    assert isinstance(job_id, str) and isinstance(kind, str) and isinstance(input_path, str)
    assert isinstance(options, str) and isinstance(status, str) and isinstance(outputs, str)
    assert reason is None or isinstance(reason, str)
    assert isinstance(created_at, float) and isinstance(updated_at, float)
    return JobRecord(
        job_id=job_id,
        kind=kind,
        input_path=input_path,
        options=_load_mapping(options),
        status=JobStatus(status),
        reason=reason,
        created_at=created_at,
        updated_at=updated_at,
        outputs=_load_mapping(outputs),
    )
