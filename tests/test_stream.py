"""The trio adapter over in-memory streams and real loopback TCP."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from handshake.handshake import HandshakeRejected, TrustDecision
from handshake.noise import StaticIdentity
from handshake.session import SessionSettings
from handshake.stream import (
    InitiatorRejectedByUs,
    SessionStream,
    StreamSettings,
    accept_session,
    initiate_session,
    open_initiator_session,
    open_responder_session,
)
from schemas.errors import RemoteProtocolError
from schemas.messages import (
    PROTOCOL_VERSION,
    Bye,
    ByeReason,
    CodecFrames,
    Hello,
    Message,
    Ping,
    TensorBlob,
    TensorDtype,
    WeightsBundle,
)

INITIATOR_ID = StaticIdentity.generate()
RESPONDER_ID = StaticIdentity.generate()
HELLO = Hello(PROTOCOL_VERSION, ("calls",), "csm", b"\x01" * 32)


def bundle(size: int, tag: int) -> WeightsBundle:
    blob = TensorBlob("w", (size,), TensorDtype.INT8, 1.0, 0.0, os.urandom(size))
    return WeightsBundle("csm", tag, 10, "none", (blob,), bytes([tag]) * 32)


BUNDLE_I = bundle(50_000, 1)
BUNDLE_R = bundle(50_000, 2)


def trusted(key: bytes) -> TrustDecision:
    assert key == INITIATOR_ID.public
    return TrustDecision.TRUSTED


async def handshake_pair(
    left: trio.abc.Stream,
    right: trio.abc.Stream,
    trust_check: Callable[[bytes], TrustDecision] = trusted,
    settings: StreamSettings | None = None,
) -> tuple[SessionStream, SessionStream]:
    results: dict[str, SessionStream] = {}

    async def initiator() -> None:
        results["i"] = await initiate_session(
            left,
            identity=INITIATOR_ID,
            responder_static_public=RESPONDER_ID.public,
            our_hello=HELLO,
            our_bundle=BUNDLE_I,
            settings=settings,
        )

    async def responder() -> None:
        results["r"] = await accept_session(
            right,
            identity=RESPONDER_ID,
            our_hello=HELLO,
            our_bundle=BUNDLE_R,
            trust_check=trust_check,
            settings=settings,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(initiator)
        nursery.start_soon(responder)
    return results["i"], results["r"]


async def exchange(ours: SessionStream, theirs: SessionStream) -> None:
    assert ours.their_bundle == BUNDLE_R and theirs.their_bundle == BUNDLE_I
    assert ours.their_static_public == RESPONDER_ID.public
    assert theirs.their_static_public == INITIATOR_ID.public
    assert ours.handshake_hash == theirs.handshake_hash
    big = CodecFrames(1, 0.0, 1, os.urandom(200_000))
    frames = [CodecFrames(n, n * 0.1, 10, os.urandom(64)) for n in range(20)]
    async with trio.open_nursery() as nursery:
        batch: list[Message] = [Ping(nonce=1), big, *frames]
        nursery.start_soon(ours.send_messages, batch)
        assert await theirs.receive_message() == Ping(nonce=1)
        assert await theirs.receive_message() == big
        for expected in frames:
            assert await theirs.receive_message() == expected
    async with trio.open_nursery() as nursery:
        # Concurrently: over a lockstep stream a write completes only as the peer reads it.
        nursery.start_soon(theirs.send_message, Ping(nonce=2))
        assert await ours.receive_message() == Ping(nonce=2)


async def test_memory_stream_pair_handshake_and_messages() -> None:
    left, right = trio.testing.memory_stream_pair()
    ours, theirs = await handshake_pair(left, right)
    await exchange(ours, theirs)
    await ours.aclose()
    assert await theirs.receive_message() == Bye(ByeReason.NORMAL)
    with pytest.raises(trio.EndOfChannel):
        await theirs.receive_message()
    await theirs.aclose()


async def test_lockstep_stream_pair(autojump_clock: trio.testing.MockClock) -> None:
    left, right = trio.testing.lockstep_stream_pair()
    ours, theirs = await handshake_pair(left, right)
    await exchange(ours, theirs)
    await ours.aclose()
    await theirs.aclose()


async def test_real_tcp_on_loopback() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[object] = []

    async def serve_one(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        stream = await listeners[0].accept()
        async with open_responder_session(
            stream,
            identity=RESPONDER_ID,
            our_hello=HELLO,
            our_bundle=BUNDLE_R,
            trust_check=trusted,
        ) as session:
            assert session.their_bundle == BUNDLE_I
            while True:
                message = await session.receive_message()
                received.append(message)
                if isinstance(message, Bye):
                    break
                await session.send_message(message)  # echo

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_one)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with open_initiator_session(
            stream,
            identity=INITIATOR_ID,
            responder_static_public=RESPONDER_ID.public,
            our_hello=HELLO,
            our_bundle=BUNDLE_I,
        ) as session:
            assert session.their_bundle == BUNDLE_R
            big = CodecFrames(7, 1.0, 3, os.urandom(150_000))
            for message in (Ping(nonce=3), big):
                await session.send_message(message)
                assert await session.receive_message() == message
    await listeners[0].aclose()
    assert received[-1] == Bye(ByeReason.NORMAL)


async def test_rejected_initiator_over_a_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    outcomes: dict[str, BaseException] = {}

    async def run(name: str, coroutine: Callable[[], Awaitable[object]]) -> None:
        try:
            await coroutine()
        except trio.BrokenResourceError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run,
            "i",
            lambda: initiate_session(
                left,
                identity=INITIATOR_ID,
                responder_static_public=RESPONDER_ID.public,
                our_hello=HELLO,
                our_bundle=BUNDLE_I,
            ),
        )
        nursery.start_soon(
            run,
            "r",
            lambda: accept_session(
                right,
                identity=RESPONDER_ID,
                our_hello=HELLO,
                our_bundle=BUNDLE_R,
                trust_check=lambda key: TrustDecision.REJECT,
            ),
        )
    initiator_cause = outcomes["i"].__cause__
    assert isinstance(initiator_cause, HandshakeRejected)
    assert initiator_cause.reason is ByeReason.NOT_TRUSTED
    assert isinstance(outcomes["r"].__cause__, InitiatorRejectedByUs)


async def test_wrong_responder_key_breaks_both_sides() -> None:
    left, right = trio.testing.memory_stream_pair()
    causes: list[BaseException | None] = []

    async def expect_broken(coroutine: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await coroutine()
        causes.append(caught.value.__cause__)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            expect_broken,
            lambda: initiate_session(
                left,
                identity=INITIATOR_ID,
                responder_static_public=INITIATOR_ID.public,
                our_hello=HELLO,
                our_bundle=None,
            ),
        )
        nursery.start_soon(
            expect_broken,
            lambda: accept_session(
                right,
                identity=RESPONDER_ID,
                our_hello=HELLO,
                our_bundle=None,
                trust_check=trusted,
            ),
        )
    assert any(isinstance(cause, RemoteProtocolError) for cause in causes)


async def test_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    left, _silent = trio.testing.memory_stream_pair()
    with pytest.raises(trio.BrokenResourceError) as caught:
        await initiate_session(
            left,
            identity=INITIATOR_ID,
            responder_static_public=RESPONDER_ID.public,
            our_hello=HELLO,
            our_bundle=None,
            settings=StreamSettings(handshake_timeout_s=3.0),
        )
    assert isinstance(caught.value.__cause__, trio.TooSlowError)
    assert trio.current_time() >= 3.0


async def test_tampered_session_bytes_break_only_that_session() -> None:
    left, right = trio.testing.memory_stream_pair()
    ours, theirs = await handshake_pair(left, right)
    # A second, independent session keeps working after the first one breaks.
    left2, right2 = trio.testing.memory_stream_pair()
    ours2, theirs2 = await handshake_pair(left2, right2)
    await left.send_stream.send_all(b"\x00\x20" + b"\xff" * 32)  # a forged frame
    with pytest.raises(trio.BrokenResourceError) as caught:
        await theirs.receive_message()
    assert isinstance(caught.value.__cause__, RemoteProtocolError)
    with pytest.raises(trio.BrokenResourceError):
        await theirs.send_message(Ping(nonce=1))
    await ours2.send_message(Ping(nonce=9))
    assert await theirs2.receive_message() == Ping(nonce=9)
    for stream in (ours, theirs, ours2, theirs2):
        await stream.aclose()


async def test_peer_vanishing_is_broken_resource() -> None:
    left, right = trio.testing.memory_stream_pair()
    _ours, theirs = await handshake_pair(left, right)
    await left.aclose()  # the transport goes away without a Bye
    with pytest.raises(trio.BrokenResourceError, match="without Bye"):
        await theirs.receive_message()
    await theirs.aclose()


async def test_rekey_over_a_stream(autojump_clock: trio.testing.MockClock) -> None:
    settings = StreamSettings(session=SessionSettings(rekey_after_seconds=5.0))
    left, right = trio.testing.memory_stream_pair()
    ours, theirs = await handshake_pair(left, right, settings=settings)
    for n in range(3):
        await trio.sleep(6.0)
        await ours.send_message(Ping(nonce=n))
        assert await theirs.receive_message() == Ping(nonce=n)
    assert ours.session.our_epoch == theirs.session.their_epoch == 3
