"""The connection manager's own limits, alone (no node): the message-1 length cap read from a
prefix that arrives in pieces, the bounded queue for handshake slots, and reason codes.

Budget: a handful of loopback connections, under 3 s.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from daemon.connections import (
    MAX_MESSAGE1_BYTES,
    MAX_WAITING_PER_SLOT,
    ConnectionStats,
    CountingStream,
    OversizedFrameError,
    reason_code,
)
from daemon.trust import CallsFrom
from handshake.noise import AuthenticationError, StaticIdentity
from handshake.replay import ReplayedMessageError
from handshake.stream import StreamSettings
from simulations.reliability import hostile_peer
from tests.reliability.managers import PLAIN_HELLO, lone_manager


async def test_an_oversized_prefix_split_across_reads_is_refused() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    counted = CountingStream(ours, ConnectionStats(), max_first_frame=MAX_MESSAGE1_BYTES)
    size = (MAX_MESSAGE1_BYTES + 1).to_bytes(2, "big")
    await theirs.send_all(size[:1])
    assert await counted.receive_some() == size[:1]
    await theirs.send_all(size[1:] + b"body")
    with pytest.raises(OversizedFrameError):
        await counted.receive_some()


async def test_a_prefix_at_the_cap_passes_and_only_the_first_frame_is_checked() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    counted = CountingStream(ours, ConnectionStats(), max_first_frame=MAX_MESSAGE1_BYTES)
    await theirs.send_all(MAX_MESSAGE1_BYTES.to_bytes(2, "big"))
    await counted.receive_some()
    await theirs.send_all(b"\xff\xff")  # later frames (message 3) may be large
    assert await counted.receive_some() == b"\xff\xff"


def test_reason_codes_follow_the_cause() -> None:
    def broken(cause: BaseException) -> trio.BrokenResourceError:
        error = trio.BrokenResourceError("session failed")
        error.__cause__ = cause
        return error

    assert reason_code(broken(trio.TooSlowError()), in_handshake=True) == "handshake_timeout"
    assert reason_code(broken(ReplayedMessageError("r")), in_handshake=True) == "replayed_msg1"
    assert reason_code(broken(AuthenticationError("a")), in_handshake=True) == "auth_failed"
    assert reason_code(broken(AuthenticationError("a")), in_handshake=False) == "tampered"
    assert reason_code(broken(OSError("reset")), in_handshake=False) == "connection_error"


async def test_the_queue_for_handshake_slots_is_bounded() -> None:
    """One slot, held by a half-open handshake: MAX_WAITING_PER_SLOT more connections wait;
    the next is refused as busy at once; the waiting ones give up after the deadline."""
    with lone_manager(
        settings=StreamSettings(handshake_timeout_s=1.0),
        max_concurrent_handshakes=1,
        handshakes_per_address_per_s=1000,
    ) as manager:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(manager.serve, "127.0.0.1", 0)
            streams = []
            for _ in range(1 + MAX_WAITING_PER_SLOT):
                stream = await hostile_peer.open_tcp("127.0.0.1", port)
                await stream.send_all(b"\x00")  # half a length prefix, then nothing
                streams.append(stream)
            await trio.sleep(0.2)
            extra = await hostile_peer.open_tcp("127.0.0.1", port)
            closed, _ = await hostile_peer.read_until_closed(extra, limit_s=0.5)
            assert closed  # refused at once, well before any deadline
            assert manager.stats.rejected == {"busy": 1}
            for stream in streams:
                done, _ = await hostile_peer.read_until_closed(stream, limit_s=5)
                assert done
                await trio.aclose_forcefully(stream)
            await trio.aclose_forcefully(extra)
            nursery.cancel_scope.cancel()
    # The slot holder timed out; each waiter either gave up waiting (busy) or got the slot
    # when the holder left and then timed out itself: none is left behind, none got through.
    rejected = manager.stats.rejected
    assert set(rejected) <= {"busy", "handshake_timeout"}, rejected
    assert rejected["busy"] >= 1 and rejected["handshake_timeout"] >= 1, rejected
    assert sum(rejected.values()) == 2 + MAX_WAITING_PER_SLOT, rejected


async def test_established_sessions_per_address_are_capped() -> None:
    """Completed handshakes from one address beyond the cap are closed and counted; another
    address is unaffected."""
    from handshake.stream import initiate_session

    identity = StaticIdentity.generate()
    with lone_manager(
        identity=identity,
        calls_from=CallsFrom.ANYONE,  # strangers get sessions
        settings=StreamSettings(),
        max_concurrent_handshakes=4,
        handshakes_per_address_per_s=1000,
        max_inbound_sessions_per_address=2,
    ) as manager:

        async def connect(source: str) -> bool:
            stream = await hostile_peer.open_tcp("127.0.0.1", port, source=source)
            try:
                session = await initiate_session(
                    stream,
                    identity=StaticIdentity.generate(),
                    responder_static_public=identity.public,
                    our_hello=PLAIN_HELLO,
                    our_bundle=None,
                )
            except trio.BrokenResourceError:
                return False
            sessions.append(session)
            return True

        sessions: list[object] = []
        async with trio.open_nursery() as nursery:
            port = await nursery.start(manager.serve, "127.0.0.1", 0)
            assert await connect("127.0.0.1") and await connect("127.0.0.1")
            with trio.fail_after(5):
                while len(manager.sessions) < 2:
                    await trio.sleep(0.01)
            # The third from the same address is refused before any handshake work.
            assert not await connect("127.0.0.1")
            assert manager.stats.rejected == {"too_many_sessions": 1}
            assert await connect("127.0.0.2")
            for session in sessions:
                await session.aclose()  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()
