"""Issue #11 item 6, the rest: endpoints announced by mDNS for a known key (candidates) are
kept across restarts, bounded and expiring, and dialing a call tries them after the peer's
configured or proven addresses; the one whose handshake succeeds becomes an address."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from daemon.calls import CallError, dial_peer
from daemon.candidates import CANDIDATES_FILE_NAME, CandidateBook, CandidateStore
from daemon.database import PeerSource, PeerStore, open_database
from daemon.peers import PeerTable, prove_candidate
from handshake.noise import StaticIdentity
from schemas.messages import PROTOCOL_VERSION, Hello
from simulations.node_helpers import loopback_config, make_home, short_root

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # prove_candidate (another process's view) reads the real clock

    def __call__(self) -> float:
        return self.now


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_book_is_bounded_per_peer_and_in_peers_and_expires():
    book = CandidateBook(ttl_s=100.0, max_peers=2, max_per_peer=2)
    book.add(KEY, ("10.0.0.1", 1), 0.0)
    book.add(KEY, ("10.0.0.2", 1), 1.0)
    book.add(KEY, ("10.0.0.3", 1), 2.0)
    assert book.addresses(KEY, 2.0) == (("10.0.0.3", 1), ("10.0.0.2", 1))  # newest first
    book.add(OTHER, ("10.0.0.9", 1), 3.0)
    book.add(bytes(32), ("10.0.0.8", 1), 4.0)  # a third peer: the least recent (KEY) goes
    assert book.addresses(KEY, 4.0) == () and len(book) == 2
    assert book.addresses(OTHER, 103.0) == (("10.0.0.9", 1),)
    assert book.addresses(OTHER, 103.5) == ()  # past the TTL it is no longer offered
    assert book.expire(103.5) == 1 and len(book) == 1
    book.remove(bytes(32), ("10.0.0.8", 1))
    assert len(book) == 0


def test_candidates_survive_a_restart_and_a_handshake_proves_one(tmp_path):
    clock = Clock()
    path = tmp_path / CANDIDATES_FILE_NAME
    with open_database(tmp_path / "node.db") as database:
        table = PeerTable(
            PeerStore(database), ttl=60, clock=clock, candidates=CandidateStore(path, clock=clock)
        )
        table.observe(KEY, name="alice", address=("127.0.0.2", 7400), source=PeerSource.STATIC)
        table.observe(KEY, name="alice", address=("127.0.0.9", 7401), source=PeerSource.MDNS)
        assert table.save_candidates() and not table.save_candidates()  # only when changed
        assert path.stat().st_mode & 0o777 == 0o600
        # A restarted node (or ``parley call``) reads them back.
        again = PeerTable(
            PeerStore(database),
            ttl=60,
            clock=clock,
            candidates=CandidateStore.open(path, clock=clock),
        )
        assert again.candidate_addresses(KEY) == (("127.0.0.9", 7401),)
        record = again.get(KEY)
        assert record is not None and record.addresses == (("127.0.0.2", 7400),)
    assert prove_candidate(tmp_path / "node.db", path, KEY, ("127.0.0.9", 7401))
    with open_database(tmp_path / "node.db") as database:
        table = PeerTable(
            PeerStore(database),
            ttl=60,
            clock=clock,
            candidates=CandidateStore.open(path, clock=clock),
        )
        assert table.candidate_addresses(KEY) == ()
        record = table.get(KEY)
        assert record is not None and ("127.0.0.9", 7401) in record.addresses


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": 9, "peers": []}', b'{"format": 1, "peers": [{"key": "ab"}]}'],
)
def test_a_damaged_candidate_file_is_set_aside_and_the_book_starts_empty(tmp_path, content):
    path = tmp_path / CANDIDATES_FILE_NAME
    path.write_bytes(content)
    store = CandidateStore.open(path)
    assert store.addresses(KEY) == ()
    assert not path.exists() and (tmp_path / (CANDIDATES_FILE_NAME + ".corrupt")).exists()


def test_an_expired_candidate_is_not_loaded(tmp_path):
    path = tmp_path / CANDIDATES_FILE_NAME
    stale = {"format": 1, "peers": [{"key": KEY.hex(), "endpoints": [["10.0.0.1", 1, 0.0]]}]}
    path.write_text(json.dumps(stale))
    assert CandidateStore.open(path).addresses(KEY) == ()


async def test_dialing_goes_past_a_dead_address_and_an_impostor_to_the_candidate_that_answers():
    from daemon.node import NodeOptions, open_node

    caller = StaticIdentity.generate()
    hello = Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=(),
        codec_architecture="x",
        codec_version_hash=b"",
    )
    with short_root() as root:
        target_home, target_id = make_home(root, "target")
        impostor_home, _ = make_home(root, "impostor")
        anyone = loopback_config(name="t", mdns=False).replace("trust", calls_from="anyone")
        async with (
            open_node(target_home, anyone, NodeOptions(listen_port=0)) as target,
            open_node(impostor_home, anyone, NodeOptions(listen_port=0)) as impostor,
        ):
            dead = ("127.0.0.1", _free_port())
            candidates = (("127.0.0.1", impostor.listen_port), ("127.0.0.1", target.listen_port))
            session = await dial_peer(
                identity=caller,
                public_key=target_id.public_key,
                addresses=(dead, *candidates),
                hello=hello,
                bundle=None,  # type: ignore[arg-type]
            )
            async with session:
                assert session.remote_address == ("127.0.0.1", target.listen_port)
                assert session.their_static_public == target_id.public_key
            # With nothing left to try, the impostor's handshake failure is the error.
            with pytest.raises(CallError, match="handshake failed with"):
                await dial_peer(
                    identity=caller,
                    public_key=target_id.public_key,
                    addresses=(dead, candidates[0]),
                    hello=hello,
                    bundle=None,  # type: ignore[arg-type]
                )


@pytest.mark.slow
def test_parley_call_tries_the_candidates_after_the_configured_address(tmp_path):
    from codec.config import CodecConfig
    from daemon.codec_store import CodecStore
    from tests.speech import SPEECH_TEXT, synthesize_speech

    with short_root() as root:
        home, _ = make_home(root, "caller")
        home.config_path.write_text(
            '[listen]\nhost = "127.0.0.1"\n[discovery]\nmdns = false\n'
            "[fl]\nround_interval_min = 0\n"
        )
        CodecStore(home.models_dir, home.features_dir, CodecConfig()).current()
        static, announced = ("127.0.0.1", _free_port()), ("127.0.0.1", _free_port())
        with open_database(home.database_path) as database:
            table = PeerTable(
                PeerStore(database),
                ttl=60,
                candidates=CandidateStore(home.root / CANDIDATES_FILE_NAME),
            )
            table.observe(OTHER, name="other", address=static, source=PeerSource.STATIC)
            table.observe(OTHER, name="other", address=announced, source=PeerSource.MDNS)
            table.trust(OTHER.hex())
            assert table.save_candidates()
        speech = synthesize_speech(SPEECH_TEXT, tmp_path / "speech.wav")
        result = subprocess.run(
            [
                *(sys.executable, "-m", "daemon.cli", "call", "other", "--in", str(speech)),
                *("--lang", "pt", "--out", str(tmp_path / "out"), "--home", str(home.root)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    # Both were tried, the configured address first (nothing listens on either).
    assert line.startswith(f"parley: unreachable: {static[0]}:{static[1]}: "), line
    assert f"; {announced[0]}:{announced[1]}: " in line, line
