"""Peer ids and the peer table: formats, TOFU name pinning, trust changes, TTL expiry."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.database import (
    PeerRecord,
    PeerSource,
    PeerStore,
    TrustState,
    open_database,
)
from daemon.peers import (
    SHORT_ID_LENGTH,
    AmbiguousPeerError,
    InvalidPeerKeyError,
    InvalidPeerNameError,
    KeyChangedError,
    PeerTable,
    UnknownPeerError,
    format_peer_id,
    parse_peer_key,
    sanitize_peer_name,
    short_peer_id,
    validate_peer_name,
)

ALICE = bytes(range(32))
BOB = bytes(range(200, 232))
MALLORY = bytes(range(50, 82))


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path):
    with open_database(tmp_path / "node.db") as database:
        yield PeerStore(database)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(store, clock) -> PeerTable:
    return PeerTable(store, ttl=60.0, clock=clock)


# --- ids ----------------------------------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_is_unpadded_lowercase_base32_and_parses_back(key):
    text = format_peer_id(key)
    assert text == base64.b32encode(key).decode().rstrip("=").lower()  # stdlib oracle
    assert len(text) == 52 and text == text.lower() and "=" not in text
    assert short_peer_id(key) == text[:SHORT_ID_LENGTH]
    assert parse_peer_key(text) == key
    assert parse_peer_key(text.upper()) == key
    assert parse_peer_key(f"  {key.hex()}\n") == key
    assert parse_peer_key(key.hex().upper()) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        ALICE.hex()[:-1],
        ALICE.hex() + "00",
        "g" * 64,
        format_peer_id(ALICE)[:-1],
        format_peer_id(ALICE) + "a",
        "1" * 52,  # 0, 1, 8, 9 are not base32 digits
        base64.b32encode(ALICE[:31]).decode().rstrip("=").lower(),
    ],
)
def test_parse_peer_key_rejects_with_one_line(text):
    with pytest.raises(InvalidPeerKeyError) as caught:
        parse_peer_key(text)
    assert "\n" not in str(caught.value)


def test_parse_peer_key_rejects_non_canonical_base32_alias():
    canonical = format_peer_id(ALICE)
    # The last base32 digit carries 1 bit of key and 4 padding bits; set a padding bit.
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    alias = canonical[:-1] + alphabet[alphabet.index(canonical[-1]) ^ 1]
    assert base64.b32decode(alias.upper() + "====") == ALICE  # stdlib accepts the alias
    with pytest.raises(InvalidPeerKeyError):
        parse_peer_key(alias)


def test_format_peer_id_rejects_wrong_length():
    with pytest.raises(InvalidPeerKeyError):
        format_peer_id(b"\x00" * 31)


@pytest.mark.parametrize("name", ["a", "alice", "Alice's laptop".replace("'", ""), "n-1.x_y"])
def test_valid_names(name):
    assert validate_peer_name(name) == name


@pytest.mark.parametrize("name", ["", " a", "a ", "a" * 64, "tab\there", "caf\u00e9", "a/b"])
def test_invalid_names(name):
    with pytest.raises(InvalidPeerNameError):
        validate_peer_name(name)


# --- observing, TOFU pinning --------------------------------------------------------------------


def test_first_sighting_is_known_and_persisted(table, store, clock):
    record = table.observe(ALICE, name="alice", address=("192.0.2.1", 4433), source=PeerSource.MDNS)
    assert record == PeerRecord(
        public_key=ALICE,
        name="alice",
        addresses=(("192.0.2.1", 4433),),
        source=PeerSource.MDNS,
        first_seen=clock.now,
        last_seen=clock.now,
        last_handshake=None,
        trust=TrustState.KNOWN,
    )
    assert store.get(ALICE) == record
    assert table.is_present(ALICE)


def test_repeat_sighting_updates_time_and_addresses(table, clock):
    first_seen = clock.now
    for port in range(1, 7):
        clock.now = first_seen + port - 1
        record = table.observe(
            ALICE, name="alice", address=("10.0.0.1", port), source=PeerSource.MDNS
        )
        # Issue #11: an announced endpoint is used once a handshake to it succeeded.
        table.record_handshake(ALICE, address=("10.0.0.1", port), source=PeerSource.MDNS)
    record = table.get(ALICE)
    assert record.first_seen == first_seen and record.last_seen == clock.now
    # Most recent first, at most four, no duplicates.
    assert record.addresses == (("10.0.0.1", 6), ("10.0.0.1", 5), ("10.0.0.1", 4), ("10.0.0.1", 3))
    table.observe(ALICE, name="alice", address=("10.0.0.1", 4), source=PeerSource.MDNS)
    record = table.record_handshake(ALICE, address=("10.0.0.1", 4), source=PeerSource.MDNS)
    assert record.addresses[0] == ("10.0.0.1", 4) and len(set(record.addresses)) == 4


def test_known_name_with_new_key_is_refused_and_recorded(table, store):
    table.observe(ALICE, name="alice", address=("10.0.0.1", 1), source=PeerSource.MDNS)
    with pytest.raises(KeyChangedError) as caught:
        table.observe(MALLORY, name="alice", address=("10.0.0.66", 1), source=PeerSource.MDNS)
    event = caught.value.event
    assert (event.name, event.pinned_key, event.offered_key) == ("alice", ALICE, MALLORY)
    assert event.address == "10.0.0.66:1"
    assert store.key_changes() == [event]
    assert store.get(MALLORY) is None  # the impostor is not added
    assert not table.is_present(MALLORY)
    assert short_peer_id(MALLORY) in str(caught.value) and "\n" not in str(caught.value)
    # The pinned key itself is still fine.
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)


def test_forgetting_the_old_key_accepts_the_new_one(table):
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    table.trust("alice")
    assert table.forget("alice").public_key == ALICE
    record = table.observe(MALLORY, name="alice", address=None, source=PeerSource.MDNS)
    assert record.trust is TrustState.KNOWN  # trust does not carry over to the new key
    assert table.get(ALICE) is None


def test_renaming_onto_another_peers_name_is_refused(table):
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    table.observe(BOB, name="bob", address=None, source=PeerSource.MDNS)
    with pytest.raises(KeyChangedError):
        table.observe(BOB, name="alice", address=None, source=PeerSource.MDNS)
    assert table.get(BOB).name == "bob"


def test_observe_validates_inputs(table):
    with pytest.raises(InvalidPeerKeyError):
        table.observe(b"short", name=None, address=None, source=PeerSource.STATIC)
    with pytest.raises(InvalidPeerNameError):
        table.observe(ALICE, name="bad\x00name", address=None, source=PeerSource.MDNS)


def test_handshake_records_inbound_unknown_peer(table, clock):
    record = table.record_handshake(BOB, address=("127.0.0.1", 5555), source=PeerSource.INBOUND)
    assert record.trust is TrustState.KNOWN and record.last_handshake == clock.now
    assert record.source is PeerSource.INBOUND and record.name is None
    clock.now += 5
    again = table.record_handshake(BOB, address=None, source=PeerSource.INBOUND)
    assert again.last_handshake == clock.now and again.first_seen == record.first_seen


# --- trust --------------------------------------------------------------------------------------


def test_trust_untrust_block_by_name_id_hex_and_prefix(table, store):
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    table.observe(BOB, name="bob", address=None, source=PeerSource.MDNS)
    assert table.trust("alice").trust is TrustState.TRUSTED
    assert table.is_trusted(ALICE) and not table.is_trusted(BOB)
    assert table.untrust(format_peer_id(ALICE)).trust is TrustState.KNOWN
    assert table.trust(BOB.hex()).public_key == BOB
    assert table.block(short_peer_id(BOB)[:6]).trust is TrustState.BLOCKED
    assert store.get(BOB).trust is TrustState.BLOCKED
    assert not table.is_trusted(BOB)


def test_trust_survives_restart(tmp_path, clock):
    with open_database(tmp_path / "node.db") as database:
        table = PeerTable(PeerStore(database), ttl=60.0, clock=clock)
        table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
        table.trust("alice")
    with open_database(tmp_path / "node.db") as database:
        table = PeerTable(PeerStore(database), ttl=60.0, clock=clock)
        assert table.is_trusted(ALICE)
        assert not table.is_present(ALICE)  # presence is not persisted: nobody seen yet


@pytest.mark.parametrize("query", ["carol", "zzzz", "abc", format_peer_id(MALLORY), MALLORY.hex()])
def test_unknown_peer_errors(table, query):
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    with pytest.raises(UnknownPeerError) as caught:
        table.trust(query)
    assert "\n" not in str(caught.value)


def test_ambiguous_prefix_and_name(table, store):
    first = b"\x00" * 31 + b"\x01"
    second = b"\x00" * 31 + b"\x02"
    table.observe(first, name=None, address=None, source=PeerSource.STATIC)
    table.observe(second, name=None, address=None, source=PeerSource.STATIC)
    assert short_peer_id(first) == short_peer_id(second)
    with pytest.raises(AmbiguousPeerError, match="matches 2 peers"):
        table.trust(short_peer_id(first))
    assert table.trust(format_peer_id(second)).public_key == second
    # Two rows with one name can only come from outside the table (e.g. an older parley).
    for key in (ALICE, BOB):
        store.upsert(PeerRecord(key, "twin", (), PeerSource.MDNS, 1.0, 1.0, None, TrustState.KNOWN))
    with pytest.raises(AmbiguousPeerError, match="use the peer id"):
        table.untrust("twin")


# --- presence and expiry ------------------------------------------------------------------------


def test_silent_peers_expire_but_stay_known(table, clock):
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    table.observe(BOB, name=None, address=("10.0.0.2", 1), source=PeerSource.STATIC)
    clock.now += 30
    table.observe(MALLORY, name="mallory", address=None, source=PeerSource.MDNS)
    clock.now += 31  # alice silent for 61 s > ttl, mallory for 31 s
    assert table.expire() == [ALICE]
    assert {record.public_key for record in table.present()} == {BOB, MALLORY}
    clock.now += 1000
    assert table.expire() == [MALLORY]
    assert [record.public_key for record in table.present()] == [BOB]  # static never expires
    assert {record.public_key for record in table.known()} == {ALICE, BOB, MALLORY}
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    assert table.is_present(ALICE)


def test_ttl_must_be_positive(store):
    with pytest.raises(ValueError):
        PeerTable(store, ttl=0)


def test_name_pinning_can_be_turned_off(store, clock):
    table = PeerTable(store, ttl=60.0, clock=clock, pin_names=False)
    table.observe(ALICE, name="alice", address=None, source=PeerSource.MDNS)
    table.observe(MALLORY, name="alice", address=None, source=PeerSource.MDNS)
    assert store.key_changes() == []
    with pytest.raises(AmbiguousPeerError):  # the name no longer identifies one peer
        table.trust("alice")


@given(st.text(max_size=120))
def test_sanitized_names_are_always_valid(text):
    assert validate_peer_name(sanitize_peer_name(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("my-host.local", "my-host.local"), ("Zo\u00eb laptop", "Zo- laptop"), ("  ", "parley")],
)
def test_sanitize_examples(text, expected):
    assert sanitize_peer_name(text) == expected


def test_merely_known_peers_are_bounded_and_the_least_recent_go_first(store, clock):
    table = PeerTable(store, ttl=60, clock=clock, max_known=3)
    table.observe(ALICE, name="alice", address=None, source=PeerSource.STATIC)
    table.observe(BOB, name="bob", address=None, source=PeerSource.MDNS)
    table.trust(BOB.hex())
    strangers = [bytes([index]) * 32 for index in range(1, 7)]
    for stranger in strangers:
        clock.now += 1
        table.record_handshake(stranger, address=None, source=PeerSource.INBOUND)
    clock.now += 1
    # A known stranger seen again is recent again and survives the next arrival.
    table.record_handshake(strangers[3], address=None, source=PeerSource.INBOUND)
    clock.now += 1
    newcomer = b"\x77" * 32
    table.record_handshake(newcomer, address=None, source=PeerSource.INBOUND)
    kept = {record.public_key for record in table.known()}
    # Static and trusted peers always stay; of the strangers, the three most recently seen.
    assert kept == {ALICE, BOB, strangers[3], strangers[5], newcomer}
    assert table.present() and all(r.public_key in kept for r in table.present())
    with pytest.raises(ValueError, match="max_known"):
        PeerTable(store, ttl=60, clock=clock, max_known=0)


def test_a_repeated_key_change_offer_refreshes_its_event(table, store, clock):
    table.observe(ALICE, name="alice", address=("10.0.0.1", 1), source=PeerSource.MDNS)
    seen = []
    for _ in range(5):  # the impostor re-announces every so often
        clock.now += 60
        with pytest.raises(KeyChangedError) as caught:
            table.observe(MALLORY, name="alice", address=("10.0.0.66", 1), source=PeerSource.MDNS)
        seen.append(caught.value.event)
    events = store.key_changes()
    assert len(events) == 1
    assert events[0].event_id == seen[0].event_id and events[0].seen_at == clock.now
