"""Issue #11 item 8, the rest: keys are never used past a hard age (WireGuard's
REJECT_AFTER_TIME), and a long session moves to keys from a fresh XK exchange run inside it
(REKEY_AFTER_TIME), without the application noticing.

Sans-IO pairs with an injected clock, then the trio stream over an in-memory pair with trio's
autojump clock (virtual time: under a second). The two-node call over loopback is
``tests/reliability/test_call_renewal.py``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from handshake.framing import NEED_DATA, frame
from handshake.noise import NoiseXK, StaticIdentity
from handshake.session import (
    REHANDSHAKE_PROLOGUE,
    REKEY_GRACE_SECONDS,
    Session,
    SessionExpiredError,
    SessionSettings,
    SessionState,
)
from handshake.stream import StreamSettings
from schemas.codec import Rehandshake, decode, encode
from schemas.errors import RemoteProtocolError
from schemas.messages import CodecFrames, Message, Ping
from tests.test_session import RESPONDER_ID, make_sessions
from tests.test_stream import handshake_pair

SHORT = SessionSettings(rehandshake_after_seconds=2.0, reject_after_seconds=3.0)
LONG = SessionSettings(rehandshake_after_seconds=1e6, reject_after_seconds=2e6)


def _events(session: Session) -> list[Message]:
    events: list[Message] = []
    while (event := session.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
    return events


def _carry(sender: Session, receiver: Session, wire: bytes) -> list[Message]:
    """Deliver ``wire``, then the key-exchange replies back and forth until both are quiet;
    return what reached ``receiver``'s application."""
    received = []
    pending = {id(receiver): wire, id(sender): b""}
    while any(pending.values()):
        for source, target in ((sender, receiver), (receiver, sender)):
            data, pending[id(target)] = pending[id(target)], b""
            if data:
                target.receive_data(data)
                events = _events(target)
                if target is receiver:
                    received += events
                else:
                    assert not events, events
                pending[id(source)] += target.data_to_send()
    return received


def test_a_long_session_keeps_delivering_on_fresh_keys():
    a, b, clock = make_sessions(SHORT, SHORT)
    first_keys = (a._send_cipher._key, b._send_cipher._key)
    for step in range(80):  # 20 s of traffic both ways, the keys good for 3 s
        clock.now += 0.25
        assert _carry(a, b, a.send(Ping(nonce=step))) == [Ping(nonce=step)]
        assert _carry(b, a, b.send(Ping(nonce=1000 + step))) == [Ping(nonce=1000 + step)]
    assert a.rehandshakes == b.rehandshakes >= 8
    assert a.state is b.state is SessionState.OPEN
    # New keys from a new Diffie-Hellman exchange, not the first handshake's (nor a rekey of them).
    assert a._send_cipher._key not in first_keys and b._send_cipher._key not in first_keys
    assert a._send_cipher._key == b._receive_cipher._key


def test_without_renewal_our_key_expires_and_an_old_peer_key_is_refused():
    # The peer never answers our exchange (its replies are lost): our key expires.
    a, b, clock = make_sessions(SHORT, LONG)
    clock.now += 2.5
    b.receive_data(a.send(Ping(nonce=1)))  # our step 1 goes out with it
    assert _events(b) == [Ping(nonce=1)]
    clock.now += 0.5
    with pytest.raises(SessionExpiredError, match="past 3 s"):
        a.send(Ping(nonce=2))
    assert a.state is SessionState.ERROR
    # A peer that keeps using one key past our limit (plus the grace for transit) is refused.
    c, d, clock = make_sessions(LONG, SHORT)
    clock.now += 3.0 + REKEY_GRACE_SECONDS + 1.0
    d.receive_data(c.send(Ping(nonce=1)))
    with pytest.raises(RemoteProtocolError, match="past 3 s"):
        d.next_event()


def test_both_sides_starting_at_once_settle_on_the_session_initiators_exchange():
    a, b, clock = make_sessions(SHORT, SHORT)
    clock.now += 2.5
    to_b, to_a = a.send(Ping(nonce=1)), b.send(Ping(nonce=2))  # each with its own step 1
    b.receive_data(to_b)
    a.receive_data(to_a)
    assert _events(b) == [Ping(nonce=1)] and _events(a) == [Ping(nonce=2)]
    assert _carry(a, b, a.data_to_send()) == [] and _carry(b, a, b.data_to_send()) == []
    assert a.rehandshakes == b.rehandshakes == 1
    assert _carry(a, b, a.send(Ping(nonce=3))) == [Ping(nonce=3)]
    assert _carry(b, a, b.send(Ping(nonce=4))) == [Ping(nonce=4)]


def test_an_exchange_completed_with_another_static_key_is_refused():
    """Someone holding the session's keys but not the peer's static key cannot take over."""
    a, b, _ = make_sessions(SHORT, SHORT)
    mallory = NoiseXK(
        initiator=True,
        identity=StaticIdentity.generate(),
        their_static_public=RESPONDER_ID.public,
        prologue=REHANDSHAKE_PROLOGUE + a._binding,
    )

    def sealed(message: Rehandshake) -> bytes:
        return frame(a._send_cipher.encrypt(encode(message)))

    b.receive_data(sealed(Rehandshake(step=1, noise=mallory.write(b""))))
    assert _events(b) == []
    reply = b.data_to_send()
    step2 = decode(a._receive_cipher.decrypt(reply[2:]))
    assert isinstance(step2, Rehandshake) and step2.step == 2
    mallory.read(step2.noise)
    b.receive_data(sealed(Rehandshake(step=3, noise=mallory.write(b""))))
    with pytest.raises(RemoteProtocolError, match="static key other than the peer's"):
        b.next_event()


def test_steps_out_of_order_are_the_peers_error():
    a, b, _ = make_sessions(SHORT, SHORT)
    b.receive_data(frame(a._send_cipher.encrypt(encode(Rehandshake(step=3, noise=b"x" * 64)))))
    with pytest.raises(RemoteProtocolError, match="out of order"):
        b.next_event()


async def test_a_stream_carrying_a_call_renews_its_keys_and_loses_nothing(autojump_clock):
    """The call's shape: the caller streams frames and reads captions in two tasks, the
    listener reads frames and writes captions back; nobody waits for the key exchange."""
    settings = StreamSettings(session=SHORT)
    left, right = trio.testing.memory_stream_pair()
    caller, listener = await handshake_pair(left, right, settings=settings)
    received: list[int] = []
    captions: list[int] = []

    async def speak() -> None:
        for index in range(200):  # 20 s at 10 messages a second
            await caller.send_message(CodecFrames(index, index * 0.1, 1, b"\x01" * 40))
            await trio.sleep(0.1)

    async def read_captions() -> None:
        while len(captions) < 20:
            message = await caller.receive_message()
            assert isinstance(message, Ping)
            captions.append(message.nonce)

    async def listen() -> None:
        while len(received) < 200:
            message = await listener.receive_message()
            assert isinstance(message, CodecFrames)
            received.append(message.seq)
            if message.seq % 10 == 0:
                await listener.send_message(Ping(nonce=message.seq))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(speak)
        nursery.start_soon(read_captions)
        nursery.start_soon(listen)
    assert received == list(range(200)) and captions == list(range(0, 200, 10))
    assert caller.session.rehandshakes == listener.session.rehandshakes >= 8
    await caller.aclose()
    await listener.aclose()


async def test_a_listener_that_stops_reading_to_finish_a_call_still_renews(autojump_clock):
    """After the caller's CallEnd the listener only writes (the last captions) for longer
    than a key lives; its sends read just enough for the key exchange to complete."""
    left, right = trio.testing.memory_stream_pair()
    caller, listener = await handshake_pair(left, right, settings=StreamSettings(session=SHORT))
    got: list[Message] = []

    async def caller_reads() -> None:
        while len(got) < 40:
            got.append(await caller.receive_message())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller_reads)
        await caller.send_message(CodecFrames(0, 0.0, 1, b"\x01"))  # "CallEnd"
        assert isinstance(await listener.receive_message(), CodecFrames)
        for nonce in range(40):  # 20 s of captions, keys good for 3 s, nobody reading
            await listener.send_message(Ping(nonce=nonce))
            await trio.sleep(0.5)
        await caller.send_message(Ping(nonce=999))
    assert got == [Ping(nonce=n) for n in range(40)]
    assert listener.session.rehandshakes >= 5
    # What arrived while the listener was only writing is still there for it to read.
    assert await listener.receive_message() == Ping(nonce=999)
    await caller.aclose()
    await listener.aclose()


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 4), st.binary(min_size=1, max_size=128)), min_size=1, max_size=4
    )
)
def test_hostile_rehandshake_steps_are_only_ever_the_peers_error(steps):
    """Forged steps (valid envelopes under the session key, garbage Noise inside) from a peer:
    a RemoteProtocolError or nothing yet, never another exception."""
    a, b, _ = make_sessions(SHORT, SHORT)
    try:
        for step, noise in steps:
            message = Rehandshake(step=step, noise=b"" if step == 4 else noise)
            b.receive_data(frame(a._send_cipher.encrypt(encode(message))))
            assert _events(b) == []
    except RemoteProtocolError:
        assert b.state is SessionState.ERROR
