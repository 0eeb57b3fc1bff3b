"""node.db: pragmas, migrations, corrupt files, the three stores, crash recovery, kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from daemon.database import (
    DATABASE_FILENAME,
    MIGRATIONS,
    DatabaseError,
    JobStateError,
    JobStatus,
    JobStore,
    PeerRecord,
    PeerSource,
    PeerStore,
    RoundStatus,
    RoundStore,
    TrustState,
    open_database,
)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / DATABASE_FILENAME


@pytest.fixture
def database(db_path: Path):
    with open_database(db_path) as database:
        yield database


def _peer(key_byte: int, name: str | None = "alice", **changes: object) -> PeerRecord:
    fields: dict[str, object] = {
        "public_key": bytes([key_byte]) * 32,
        "name": name,
        "addresses": (("127.0.0.1", 4433),),
        "source": PeerSource.MDNS,
        "first_seen": 10.0,
        "last_seen": 11.0,
        "last_handshake": None,
        "trust": TrustState.KNOWN,
    }
    fields.update(changes)
    return PeerRecord(**fields)  # type: ignore[arg-type]


# --- opening, pragmas, migrations ------------------------------------------------------------


def test_open_sets_wal_full_sync_and_schema_version(database, db_path):
    with database.transaction(write=False) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"peers", "rounds", "jobs", "key_changes"} <= tables
    assert database.schema_version == len(MIGRATIONS)
    # Read independently of our code: the version is in the file itself.
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    raw.close()


def test_reopen_keeps_data_and_does_not_remigrate(db_path):
    with open_database(db_path) as database:
        PeerStore(database).upsert(_peer(1))
    with open_database(db_path) as database:
        assert PeerStore(database).get(bytes([1]) * 32) == _peer(1)
        assert database.schema_version == len(MIGRATIONS)


def test_plain_sqlite_file_at_version_zero_is_migrated(db_path):
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE unrelated (x INTEGER)")
    raw.commit()
    raw.close()
    with open_database(db_path) as database:
        assert database.schema_version == len(MIGRATIONS)
        JobStore(database).create(kind="caption", input_path="/a.wav", options={})


def test_newer_schema_is_refused(db_path):
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseError, match="newer") as caught:
        open_database(db_path)
    assert str(db_path) in str(caught.value)


def test_garbage_file_gives_one_line_error_naming_it(db_path):
    db_path.write_bytes(b"this is not a database, just some text\n" * 200)
    with pytest.raises(DatabaseError) as caught:
        open_database(db_path)
    message = str(caught.value)
    assert str(db_path) in message and "\n" not in message
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_damaged_pages_give_one_line_error(db_path):
    with open_database(db_path) as database:
        store = JobStore(database)
        for index in range(300):
            store.create(kind="caption", input_path=f"/audio/{index}.wav", options={"i": index})
    # Closing the last connection checkpoints the WAL into the main file.
    assert not db_path.with_name(db_path.name + "-wal").exists()
    data = bytearray(db_path.read_bytes())
    assert len(data) > 4 * 4096
    data[2 * 4096 : 4 * 4096] = b"\xa5" * (2 * 4096)  # overwrite two b-tree pages
    db_path.write_bytes(bytes(data))
    with pytest.raises(DatabaseError) as caught:
        open_database(db_path)
    assert str(db_path) in str(caught.value) and "\n" not in str(caught.value)


def test_failed_transaction_rolls_back(database):
    store = PeerStore(database)
    with pytest.raises(RuntimeError), database.transaction() as connection:
        connection.execute(
            "INSERT INTO peers (public_key, addresses, source, first_seen, last_seen, trust) "
            "VALUES (?, '[]', 'mdns', 1.0, 1.0, 'known')",
            (b"k" * 32,),
        )
        raise RuntimeError("boom")
    assert store.all() == []


# --- peers ------------------------------------------------------------------------------------


def test_peer_store_round_trip_and_lookup(database):
    store = PeerStore(database)
    alice = _peer(1, "alice", addresses=(("127.0.0.1", 1), ("::1", 2)), last_handshake=12.5)
    bob = _peer(2, "bob", first_seen=20.0, trust=TrustState.TRUSTED, source=PeerSource.STATIC)
    store.upsert(bob)
    store.upsert(alice)
    assert store.get(alice.public_key) == alice
    assert store.all() == [alice, bob]  # oldest first
    assert store.find_by_name("bob") == [bob]
    assert store.find_by_name("carol") == []
    store.upsert(_peer(1, "alice", trust=TrustState.BLOCKED))
    assert store.get(alice.public_key).trust is TrustState.BLOCKED
    assert store.delete(alice.public_key) is True
    assert store.delete(alice.public_key) is False
    assert store.get(alice.public_key) is None


def test_peer_key_must_be_32_bytes(database):
    with pytest.raises(ValueError):
        _peer(1, public_key=b"short")
    # The schema enforces it too, for rows written by anything else (translated, cause kept).
    with pytest.raises(DatabaseError) as raised, database.transaction() as connection:
        connection.execute(
            "INSERT INTO peers (public_key, addresses, source, first_seen, last_seen, trust) "
            "VALUES (?, '[]', 'mdns', 1.0, 1.0, 'known')",
            (b"short",),
        )
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)


def test_key_change_events_are_kept_newest_first(database):
    store = PeerStore(database)
    first = store.record_key_change(
        name="alice",
        pinned_key=b"a" * 32,
        offered_key=b"m" * 32,
        source=PeerSource.MDNS,
        address="192.0.2.1:4433",
        seen_at=5.0,
    )
    second = store.record_key_change(
        name="alice",
        pinned_key=b"a" * 32,
        offered_key=b"n" * 32,
        source=PeerSource.STATIC,
        address=None,
        seen_at=6.0,
    )
    assert store.key_changes() == [second, first]
    assert second.event_id > first.event_id


def test_key_change_events_are_capped_oldest_first(database, monkeypatch):
    import daemon.database

    monkeypatch.setattr(daemon.database, "MAX_KEY_CHANGE_EVENTS", 3)
    store = PeerStore(database)
    events = [
        store.record_key_change(
            name="alice",
            pinned_key=b"a" * 32,
            offered_key=bytes([index]) * 32,
            source=PeerSource.MDNS,
            address=None,
            seen_at=float(index),
        )
        for index in range(5)
    ]
    assert store.key_changes() == events[:1:-1]


# --- rounds -----------------------------------------------------------------------------------


def test_rounds_are_numbered_and_finished_once(database):
    clock = FakeClock(100.0)
    rounds = RoundStore(database, clock=clock)
    first = rounds.begin(alpha=0.7, peers=["p1"])
    clock.now = 150.0
    second = rounds.begin(alpha=0.5, peers=[])
    assert (first.round_number, second.round_number) == (1, 2)
    assert first.status is RoundStatus.RUNNING and first.started_at == 100.0
    clock.now = 200.0
    done = rounds.finish(
        1,
        status=RoundStatus.COMPLETED,
        peers=["p1", "p2"],
        n=3,
        loss_before=1.5,
        loss_after=0.75,
        record={"weights": [3, 4], "note": "ok"},
    )
    assert done.finished_at == 200.0
    assert (done.n, done.loss_before, done.loss_after) == (3, 1.5, 0.75)
    assert done.peers == ("p1", "p2") and done.record == {"weights": [3, 4], "note": "ok"}
    assert done.alpha == 0.7
    with pytest.raises(DatabaseError, match="not running"):
        rounds.finish(
            1,
            status=RoundStatus.FAILED,
            peers=[],
            n=None,
            loss_before=None,
            loss_after=None,
            record={},
        )
    with pytest.raises(ValueError):
        rounds.finish(
            2,
            status=RoundStatus.RUNNING,
            peers=[],
            n=None,
            loss_before=None,
            loss_after=None,
            record={},
        )
    assert [record.round_number for record in rounds.recent()] == [2, 1]


def test_round_record_rejects_non_json_values(database):
    rounds = RoundStore(database)
    rounds.begin(alpha=0.7, peers=[])
    with pytest.raises(ValueError):
        rounds.finish(
            1,
            status=RoundStatus.COMPLETED,
            peers=[],
            n=1,
            loss_before=float("nan"),
            loss_after=None,
            record={"loss": float("nan")},
        )
    assert rounds.get(1).status is RoundStatus.RUNNING  # nothing half-written


def test_interrupted_rounds_are_abandoned_on_restart(db_path):
    with open_database(db_path) as database:
        RoundStore(database).begin(alpha=0.7, peers=[])
    with open_database(db_path) as database:
        rounds = RoundStore(database)
        assert rounds.abandon_interrupted() == 1
        assert rounds.get(1).status is RoundStatus.ABANDONED
        assert rounds.abandon_interrupted() == 0


# --- jobs -------------------------------------------------------------------------------------


def test_job_lifecycle_fifo_and_outputs(database):
    clock = FakeClock(1.0)
    jobs = JobStore(database, clock=clock)
    first = jobs.create(kind="caption", input_path="/a.wav", options={"to": "pt"})
    clock.now = 2.0
    second = jobs.create(kind="caption", input_path="/b.mp4", options={})
    assert first.status is JobStatus.PENDING and first.options == {"to": "pt"}
    clock.now = 3.0
    claimed = jobs.claim_next()
    assert claimed is not None and claimed.job_id == first.job_id
    assert claimed.status is JobStatus.PROCESSING and claimed.updated_at == 3.0
    ready = jobs.mark_ready(first.job_id, outputs={"srt": "/a.srt", "vtt": "/a.vtt"})
    assert ready.status is JobStatus.READY and ready.outputs == {"srt": "/a.srt", "vtt": "/a.vtt"}
    assert jobs.claim_next().job_id == second.job_id
    failed = jobs.mark_failed(second.job_id, reason="no audio stream in /b.mp4")
    assert failed.status is JobStatus.FAILED and failed.reason == "no audio stream in /b.mp4"
    assert jobs.claim_next() is None
    assert [job.job_id for job in jobs.list()] == [first.job_id, second.job_id]
    assert [job.job_id for job in jobs.list(status=JobStatus.FAILED)] == [second.job_id]


@pytest.mark.parametrize(
    "illegal",
    [
        "ready_from_pending",
        "ready_twice",
        "ready_after_failed",
        "failed_after_ready",
    ],
)
def test_illegal_job_transitions_are_refused(database, illegal):
    jobs = JobStore(database)
    job = jobs.create(kind="caption", input_path="/a.wav", options={})
    with pytest.raises(JobStateError):
        if illegal == "ready_from_pending":
            jobs.mark_ready(job.job_id, outputs={})
        elif illegal == "ready_twice":
            jobs.claim_next()
            jobs.mark_ready(job.job_id, outputs={"srt": "/a.srt"})
            jobs.mark_ready(job.job_id, outputs={"srt": "/other.srt"})
        elif illegal == "ready_after_failed":
            jobs.mark_failed(job.job_id, reason="x")
            jobs.mark_ready(job.job_id, outputs={})
        else:
            jobs.claim_next()
            jobs.mark_ready(job.job_id, outputs={})
            jobs.mark_failed(job.job_id, reason="late")
    # The refused move changed nothing: the job still reads back in a legal state.
    assert jobs.get(job.job_id).outputs in ({}, {"srt": "/a.srt"})


def test_unknown_job_id(database):
    with pytest.raises(JobStateError, match="no job"):
        JobStore(database).mark_failed("nope", reason="x")


def test_processing_jobs_go_back_to_pending_after_a_crash(db_path):
    with open_database(db_path) as database:
        jobs = JobStore(database)
        job = jobs.create(kind="caption", input_path="/a.wav", options={})
        other = jobs.create(kind="caption", input_path="/b.wav", options={})
        assert jobs.claim_next().job_id == job.job_id
        # "crash": the process goes away without finishing the job
    with open_database(db_path) as database:
        jobs = JobStore(database)
        assert jobs.recover_interrupted() == 1
        assert jobs.get(job.job_id).status is JobStatus.PENDING
        assert jobs.get(other.job_id).status is JobStatus.PENDING
        assert jobs.claim_next().job_id == job.job_id


async def test_stores_are_usable_from_worker_threads(database):
    jobs = JobStore(database)

    async def create_many(worker: int) -> None:
        for index in range(20):
            await trio.to_thread.run_sync(
                lambda index=index: jobs.create(
                    kind="caption", input_path=f"/{worker}/{index}.wav", options={}
                )
            )

    async with trio.open_nursery() as nursery:
        for worker in range(4):
            nursery.start_soon(create_many, worker)
    claimed = set()
    while (job := await trio.to_thread.run_sync(jobs.claim_next)) is not None:
        assert job.job_id not in claimed
        claimed.add(job.job_id)
    assert len(claimed) == 80


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from daemon.database import JobStore, open_database

    database = open_database(Path(sys.argv[1]))
    jobs = JobStore(database)
    index = 0
    while True:
        job = jobs.create(kind="caption", input_path=f"/in/{index}.wav", options={"i": index})
        print(job.job_id, flush=True)  # printed only after the commit returned
        index += 1
    """
)


def test_kill_9_mid_write_leaves_every_acknowledged_job(db_path):
    repo_root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo_root,
        env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin"},
    )
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(200)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    with open_database(db_path) as database:
        stored = {job.job_id for job in JobStore(database).list(limit=1_000_000)}
    assert all(acknowledged)
    assert set(acknowledged) <= stored


def test_counts_agree_with_the_rows_and_are_not_capped(database):
    jobs = JobStore(database)
    for index in range(150):
        jobs.create(kind="caption", input_path=f"/in/{index}.wav", options={})
    jobs.claim_next()
    pending = jobs.count(status=JobStatus.PENDING)
    assert pending == 149  # more than list()'s default page of 100
    assert pending == len(jobs.list(status=JobStatus.PENDING, limit=1000))
    assert jobs.count(status=JobStatus.PROCESSING) == 1
    rounds = RoundStore(database)
    for _ in range(3):
        rounds.begin(alpha=0.7, peers=[])
    for number, status in ((1, RoundStatus.COMPLETED), (2, RoundStatus.FAILED)):
        rounds.finish(
            number, status=status, peers=[], n=None, loss_before=None, loss_after=None, record={}
        )
    completed = [r for r in rounds.recent(limit=10) if r.status is RoundStatus.COMPLETED]
    assert rounds.count(status=RoundStatus.COMPLETED) == len(completed) == 1
    assert rounds.count(status=RoundStatus.RUNNING) == 1
