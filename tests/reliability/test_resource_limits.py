"""Issue #11 item 4: limits that count more than sessions.

Rate limits by network prefix that fail closed, half-open connections capped per prefix,
descriptor-derived caps, and one memory budget for chunk reassembly. Budget: a few hundred
loopback connections (from 127.x source addresses), under 10 s.
"""

from __future__ import annotations

import pytest
import trio

from daemon.connections import connection_limits
from daemon.ratelimit import HandshakeLimiter, RateLimiter, address_prefix
from handshake.budget import MemoryBudget
from handshake.framing import NEED_DATA
from handshake.handshake import InitiatorHandshake, ResponderHandshake, TrustDecision
from handshake.noise import StaticIdentity
from handshake.session import CHUNK_DATA_BYTES, Session, SessionSettings
from handshake.stream import StreamSettings
from handshake.testing import complete_in_memory
from schemas.errors import RemoteProtocolError
from schemas.messages import Ping
from simulations.reliability import hostile_peer
from tests.reliability.managers import PLAIN_HELLO, lone_manager


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_table_fails_closed_instead_of_handing_out_fresh_buckets():
    """The report's 12,291 of 12,291: cycling through one more address than the table holds
    gave every attempt a fresh bucket."""
    clock = Clock()
    limiter = RateLimiter(rate_per_s=0.01, burst=1, clock=clock, max_addresses=50)
    allowed = sum(
        limiter.allow(f"10.0.{index // 250}.{index % 250}") for _ in range(3) for index in range(51)
    )
    assert allowed == 50  # each address's one token; the 51st is refused, not evicted for
    assert limiter.refused_table_full > 0 and len(limiter) == 50
    # A bucket that refilled completely carries no information: it may make room.
    clock.now += 1 / 0.01
    assert limiter.allow("10.9.9.9")


def test_prefixes():
    assert address_prefix("127.5.6.7") == "127.5.6.0/24"
    assert address_prefix("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert address_prefix("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_prefix("2001:db8:1:2:ffff::1") == address_prefix("2001:db8:1:2::9")
    assert address_prefix("fe80::1%eth0") == "fe80::/64"
    assert address_prefix("not an address") == "not an address"


def test_many_addresses_of_one_prefix_share_its_budget_and_a_neighbour_keeps_its_own():
    clock = Clock()
    limiter = HandshakeLimiter(rate_per_s=5, clock=clock)
    spread = sum(limiter.allow(f"127.9.0.{index}") for index in range(1, 255))
    assert spread <= 2 * 20  # the /24's burst (4x one address's rate, twice over)
    # One address flooding spends its own bucket, not its /24's.
    single = sum(limiter.allow("127.8.0.2") for _ in range(1000))
    assert single <= 10
    assert limiter.allow("127.8.0.1")
    # IPv6: a /64 is one network however many addresses it uses.
    six = sum(limiter.allow(f"2001:db8::{index:x}") for index in range(1, 1000))
    assert six <= 40


def test_connection_limits_leave_room_for_the_node_itself():
    for nofile in (64, 200, 256, 1024, 4096, 65536):
        limits = connection_limits(nofile, max_concurrent_handshakes=32)
        used = limits.max_sessions + limits.max_half_open
        assert used <= max(4, nofile - 64) and used <= nofile * 7 // 8 + 1, (nofile, limits)
        assert 1 <= limits.max_half_open_per_prefix <= limits.max_half_open
    limits = connection_limits(200, max_concurrent_handshakes=32)
    assert limits.max_sessions < 183  # the report's 183 stranger sessions at ulimit -n 200


async def test_a_flood_from_many_addresses_of_one_prefix_is_refused_before_any_handshake():
    with lone_manager(
        settings=StreamSettings(handshake_timeout_s=2.0),
        max_concurrent_handshakes=4,
        handshakes_per_address_per_s=5,
        clock=lambda: 0.0,  # the flood is one instant: no tokens come back meanwhile
    ) as manager:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(manager.serve, "127.0.0.1", 0)
            attempts = 200
            for index in range(attempts):
                stream = await hostile_peer.open_tcp(
                    "127.0.0.1", port, source=f"127.77.0.{1 + index}"
                )
                await trio.aclose_forcefully(stream)
            with trio.fail_after(10):
                while sum(manager.stats.rejected.values()) < attempts - 40:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    limited = manager.stats.rejected.get("rate_limited", 0)
    assert limited == attempts - 40, manager.stats.rejected  # the /24's burst got in, no more
    # None of the refused ones cost a handshake (no Diffie-Hellman): only the 40 got that far.
    assert sum(manager.stats.rejected.values()) - limited <= 40


async def test_half_open_connections_are_capped_per_prefix():
    with lone_manager(
        settings=StreamSettings(handshake_timeout_s=3.0),
        max_concurrent_handshakes=8,
        handshakes_per_address_per_s=1000,
        max_half_open_per_prefix=8,
    ) as manager:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(manager.serve, "127.0.0.1", 0)
            silent = []
            for index in range(20):  # 20 silent sockets from 20 addresses of one /24
                stream = await hostile_peer.open_tcp(
                    "127.0.0.1", port, source=f"127.66.0.{10 + index}"
                )
                await stream.send_all(b"\x00")
                silent.append(stream)
            await trio.sleep(0.3)
            assert manager.stats.rejected.get("half_open_limit", 0) == 12
            # Another network still gets a place in the queue.
            other = await hostile_peer.open_tcp("127.0.0.1", port, source="127.0.0.1")
            await other.send_all(b"\x00")
            await trio.sleep(0.2)
            assert manager.stats.rejected.get("half_open_limit", 0) == 12
            for stream in [*silent, other]:
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


def _session_pair(budget: MemoryBudget) -> tuple[Session, Session]:
    settings = SessionSettings(reassembly_budget=budget)
    responder_identity = StaticIdentity.generate()
    initiator = InitiatorHandshake(
        identity=StaticIdentity.generate(),
        responder_static_public=responder_identity.public,
        our_hello=PLAIN_HELLO,
        our_bundle=None,
        clock=Clock(),
        settings=settings,
    )
    responder = ResponderHandshake(
        identity=responder_identity,
        our_hello=PLAIN_HELLO,
        our_bundle=None,
        trust_check=lambda key: TrustDecision.TRUSTED,
        clock=Clock(),
        settings=settings,
    )
    ours, theirs = complete_in_memory(initiator, responder)
    return ours.session, theirs.session


def _partial_message(sender: Session, chunks: int) -> bytes:
    """The first ``chunks`` frames of a four-chunk message (a peer that stops midway)."""
    data = sender._seal_chunked(b"\x00" * (CHUNK_DATA_BYTES * 4))
    offset = 0
    for _ in range(chunks):
        offset += 2 + int.from_bytes(data[offset : offset + 2], "big")
    return data[:offset]


def _feed(receiver: Session, data: bytes) -> None:
    """As the stream does: one frame per read here, then the events it completes."""
    offset = 0
    while offset < len(data):
        size = 2 + int.from_bytes(data[offset : offset + 2], "big")
        receiver.receive_data(data[offset : offset + size])
        offset += size
        assert receiver.next_event() is NEED_DATA


def test_chunk_reassembly_draws_on_one_budget_for_all_sessions():
    # Room for three chunks, and one frame's worth of received bytes besides.
    budget = MemoryBudget(3 * CHUNK_DATA_BYTES + 1024)
    pairs = [_session_pair(budget) for _ in range(3)]
    held: list[Session] = []
    for sender, receiver in pairs[:2]:
        try:
            _feed(receiver, _partial_message(sender, 2))
            held.append(receiver)
        except RemoteProtocolError as error:
            assert "budget" in str(error)
    # Two sessions each tried to hold 2 chunks; the budget has room for 3 in all.
    assert len(held) == 1 and budget.refused == 1
    assert budget.in_use == 2 * CHUNK_DATA_BYTES  # the failed session gave its chunk back
    held[0].discard_partial()  # a session that ends gives its bytes back
    assert budget.in_use == 0
    sender, receiver = pairs[2]
    _feed(receiver, _partial_message(sender, 2))
    assert budget.in_use == 2 * CHUNK_DATA_BYTES
    # A session that fails (here: a forged frame) gives its bytes back as well.
    receiver.receive_data(b"\x00\x20" + b"\x00" * 32)
    with pytest.raises(RemoteProtocolError):
        receiver.next_event()
    assert budget.in_use == 0


def test_unconsumed_received_bytes_draw_on_the_same_budget():
    """Issue #11 item 4: each session's frame reader may hold a partial frame (up to a few
    maximal frames); those bytes count against the node-wide budget too."""
    budget = MemoryBudget(100_000)
    pairs = [_session_pair(budget) for _ in range(3)]
    partial = b"\xff\xff" + b"\x00" * 39_998  # a 65,535-byte frame announced, 40,000 bytes sent
    for _, receiver in pairs[:2]:
        receiver.receive_data(partial)
        assert receiver.next_event() is NEED_DATA
    assert budget.in_use == 80_000
    with pytest.raises(RemoteProtocolError, match="budget"):
        pairs[2][1].receive_data(partial)
    assert budget.in_use == 80_000  # the refused bytes were never held
    pairs[0][1].release_memory()  # a session that ends gives its reader's bytes back
    assert budget.in_use == 40_000
    # Consuming frames gives their bytes back as they go.
    sender, receiver = _session_pair(budget)
    receiver.receive_data(sender.send(Ping(nonce=1)) + sender.send(Ping(nonce=2)))
    assert budget.in_use > 40_000
    assert receiver.next_event() == Ping(nonce=1)
    assert receiver.next_event() == Ping(nonce=2)
    assert budget.in_use == 40_000
