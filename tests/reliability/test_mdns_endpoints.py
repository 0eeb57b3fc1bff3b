"""Issue #11 item 6: an unauthenticated mDNS announcement cannot redirect a peer we know.

A new endpoint for a known key is only used once a handshake to it succeeds; a static peer
keeps its configured address and source; the resolver's live map is bounded; announcements of
addresses off our link are ignored.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import trio

from daemon.database import PeerSource, PeerStore, open_database
from daemon.discovery import (
    MAX_LIVE_SERVICES,
    DiscoveredPeer,
    _Resolver,
    build_txt,
    on_link_networks,
    parse_txt,
)
from daemon.peers import PeerTable

ALICE = bytes(range(32))


def _table(path: Path) -> tuple[PeerTable, object]:
    database = open_database(path / "node.db")
    return PeerTable(PeerStore(database), ttl=60.0), database


def test_mdns_cannot_move_a_static_peer(tmp_path):
    table, database = _table(tmp_path)
    with database:  # type: ignore[attr-defined]
        table.observe(ALICE, name="alice", address=("127.0.0.2", 7400), source=PeerSource.STATIC)
        record = table.observe(
            ALICE, name="alice", address=("127.0.0.1", 22), source=PeerSource.MDNS
        )
        assert record.addresses == (("127.0.0.2", 7400),)
        assert record.source is PeerSource.STATIC
        assert table.get(ALICE).addresses == (("127.0.0.2", 7400),)
        # The static peer stays present (it would expire as an mDNS peer).
        assert any(peer.public_key == ALICE for peer in table.present())
        table.expire()
        assert table.is_present(ALICE)


def test_a_new_endpoint_for_a_known_key_waits_for_a_handshake(tmp_path):
    table, database = _table(tmp_path)
    with database:  # type: ignore[attr-defined]
        table.observe(ALICE, name="alice", address=("127.0.0.2", 7400), source=PeerSource.MDNS)
        record = table.observe(
            ALICE, name="alice", address=("127.0.0.1", 22), source=PeerSource.MDNS
        )
        assert record.addresses == (("127.0.0.2", 7400),)
        assert table.candidate_addresses(ALICE) == (("127.0.0.1", 22),)
        # A handshake to the new endpoint succeeded: now it is an address, first.
        table.record_handshake(ALICE, address=("127.0.0.1", 22), source=PeerSource.MDNS)
        assert table.get(ALICE).addresses[0] == ("127.0.0.1", 22)
        assert table.candidate_addresses(ALICE) == ()


def test_off_link_announcements_are_ignored():
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    txt = build_txt(ALICE, "alice")
    assert parse_txt(txt, addresses=["192.0.2.7"], port=7400, on_link=loopback) is None
    peer = parse_txt(txt, addresses=["192.0.2.7", "127.0.0.9"], port=7400, on_link=loopback)
    assert peer is not None and peer.host == "127.0.0.9"
    assert ipaddress.ip_network("127.0.0.0/8") in on_link_networks(["127.0.0.1"])


async def test_the_resolvers_live_map_is_bounded():
    send, receive = trio.open_memory_channel[DiscoveredPeer](1)
    resolver = _Resolver(None, our_key=b"\x00" * 32, peers=send, refresh_interval=30.0)  # type: ignore[arg-type]
    for index in range(2000):  # the report's 2,000 fake names
        key = index.to_bytes(4, "big") * 8
        peer = DiscoveredPeer(
            public_key=key, name=None, host="127.0.0.1", port=7400, source=PeerSource.MDNS
        )
        resolver.remember(f"fake{index}._parley._tcp.local.", peer)
    assert resolver.live_count == MAX_LIVE_SERVICES
    await send.aclose()
    await receive.aclose()
