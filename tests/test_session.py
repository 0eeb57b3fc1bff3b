"""The established session as in-memory pairs: framing, chunking, rekeying, limits."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handshake.framing import MAX_FRAME, NEED_DATA, FrameReader, frame
from handshake.handshake import InitiatorHandshake, ResponderHandshake, TrustDecision
from handshake.noise import MAX_TRANSPORT_PLAINTEXT, StaticIdentity
from handshake.session import (
    CHUNK_DATA_BYTES,
    REKEY_GRACE_SECONDS,
    Session,
    SessionSettings,
    SessionState,
)
from handshake.testing import complete_in_memory
from schemas.codec import Rekey, encode
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.messages import (
    PROTOCOL_VERSION,
    Bye,
    ByeReason,
    Chunk,
    CodecFrames,
    Hello,
    Message,
    Ping,
    TensorBlob,
    TensorDtype,
    WeightsBundle,
)

INITIATOR_ID = StaticIdentity(bytes(range(32)))
RESPONDER_ID = StaticIdentity(bytes(range(100, 132)))
HELLO = Hello(PROTOCOL_VERSION, (), "csm", b"")
#: The symmetric rekey alone: no fresh key exchange falls due (tests/reliability covers those).
SYMMETRIC_ONLY = SessionSettings(rehandshake_after_seconds=1e6, reject_after_seconds=2e6)


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def make_sessions(
    initiator_settings: SessionSettings | None = None,
    responder_settings: SessionSettings | None = None,
) -> tuple[Session, Session, FakeClock]:
    clock = FakeClock()
    initiator = InitiatorHandshake(
        identity=INITIATOR_ID,
        responder_static_public=RESPONDER_ID.public,
        our_hello=HELLO,
        our_bundle=None,
        clock=clock,
        settings=initiator_settings,
    )
    responder = ResponderHandshake(
        identity=RESPONDER_ID,
        our_hello=HELLO,
        our_bundle=None,
        trust_check=lambda key: TrustDecision.TRUSTED,
        clock=clock,
        settings=responder_settings,
    )
    ours, theirs = complete_in_memory(initiator, responder)
    return ours.session, theirs.session, clock


def deliver(sender: Session, receiver: Session, message: Message) -> list[Message]:
    """Send one message; feed it as a stream reader would (64 KiB reads, drained between)."""
    wire = sender.send(message)
    events: list[Message] = []
    for start in range(0, len(wire), 65536):
        receiver.receive_data(wire[start : start + 65536])
        events += drain(receiver)
    return events


def drain(receiver: Session) -> list[Message]:
    events: list[Message] = []
    while (event := receiver.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
        if isinstance(event, Bye):
            break  # the session is CLOSED now; reading further is an error
    return events


def forge(sender: Session, plaintext: bytes) -> bytes:
    """A correctly encrypted frame with content the real sender would never produce."""
    return frame(sender._send_cipher.encrypt(plaintext))


def test_messages_both_ways_and_need_data_on_partial_input() -> None:
    a, b, _ = make_sessions()
    data = a.send(Ping(nonce=1))
    b.receive_data(data[:5])
    assert b.next_event() is NEED_DATA
    b.receive_data(data[5:])
    assert b.next_event() == Ping(nonce=1)
    assert b.next_event() is NEED_DATA
    assert deliver(b, a, Ping(nonce=2)) == [Ping(nonce=2)]


def test_chunking_a_200kb_payload() -> None:
    a, b, _ = make_sessions()
    blob = os.urandom(200_000)
    bundle = WeightsBundle(
        "csm", 3, 10, "none", (TensorBlob("w", (200_000,), TensorDtype.INT8, 1.0, 0.0, blob),), b""
    )
    wire = a.send(bundle)
    reader = FrameReader()
    reader.receive_data(wire)
    frames = []
    while (item := reader.next_frame()) is not NEED_DATA:
        assert isinstance(item, bytes)
        frames.append(item)
    assert len(frames) == -(-len(encode(bundle)) // CHUNK_DATA_BYTES) == 4
    assert all(len(f) <= MAX_FRAME for f in frames)
    # Delivered in awkward slices, it reassembles to the same message.
    for start in range(0, len(wire), 7001):
        b.receive_data(wire[start : start + 7001])
    assert drain(b) == [bundle]


def test_chunk_overhead_fits_the_transport_limit() -> None:
    widest = Chunk(2**32 - 1, 2**32 - 1, 2**32 - 1, b"\xff" * CHUNK_DATA_BYTES)
    assert len(encode(widest)) <= MAX_TRANSPORT_PLAINTEXT


def test_payload_over_chunked_limit_is_local_error() -> None:
    a, _, _ = make_sessions(SessionSettings(max_chunked_payload=100_000))
    with pytest.raises(LocalProtocolError, match="chunked limit"):
        a.send(CodecFrames(1, 0.0, 1, b"x" * 120_000))
    assert a.state is SessionState.OPEN  # nothing was sent; the session is intact


def test_rekey_on_both_sides_by_message_count() -> None:
    rekey = SessionSettings(rekey_after_messages=4)
    a, b, _ = make_sessions(rekey, rekey)
    for n in range(25):
        assert deliver(a, b, Ping(nonce=n)) == [Ping(nonce=n)]
        assert deliver(b, a, Ping(nonce=1000 + n)) == [Ping(nonce=1000 + n)]
    # 3 messages + 1 notice per epoch: 25 messages need 8 rekeys in each direction.
    assert a.our_epoch == b.their_epoch == 8
    assert b.our_epoch == a.their_epoch == 8


def test_rekey_by_time_and_chunks_across_a_rekey() -> None:
    a, b, clock = make_sessions(SYMMETRIC_ONLY, SYMMETRIC_ONLY)
    assert deliver(a, b, Ping(nonce=1)) == [Ping(nonce=1)]
    clock.now += 121.0
    assert deliver(a, b, Ping(nonce=2)) == [Ping(nonce=2)]
    assert a.our_epoch == b.their_epoch == 1
    assert b.our_epoch == 0
    # A rekey falling inside a chunked message is accepted between its chunks.
    small = SessionSettings(rekey_after_messages=3)
    c, d, _ = make_sessions(small, small)
    big = CodecFrames(1, 0.0, 1, os.urandom(300_000))
    assert deliver(c, d, big) == [big]
    assert c.our_epoch == d.their_epoch >= 2


def test_rekey_mismatch_by_count_is_detected_and_closes() -> None:
    a, b, _ = make_sessions(
        SessionSettings(rekey_after_messages=10), SessionSettings(rekey_after_messages=5)
    )
    for n in range(5):
        assert deliver(a, b, Ping(nonce=n)) == [Ping(nonce=n)]
    with pytest.raises(RemoteProtocolError, match="rekey mismatch"):
        deliver(a, b, Ping(nonce=5))
    assert b.state is SessionState.ERROR
    with pytest.raises(LocalProtocolError):
        b.next_event()
    with pytest.raises(LocalProtocolError):
        b.send(Ping(nonce=0))
    # Only that session ended: the sender's side is untouched by the receiver's verdict.
    assert a.state is SessionState.OPEN


def test_idle_session_rekeys_on_next_message_without_false_mismatch() -> None:
    a, b, clock = make_sessions(SYMMETRIC_ONLY, SYMMETRIC_ONLY)
    clock.now += 10_000.0  # far past rekey_after_seconds + grace, nothing sent meanwhile
    assert deliver(a, b, Ping(nonce=1)) == [Ping(nonce=1)]
    assert deliver(b, a, Ping(nonce=2)) == [Ping(nonce=2)]
    assert a.our_epoch == b.their_epoch == 1 and b.our_epoch == a.their_epoch == 1


def test_rekey_mismatch_by_time_is_detected() -> None:
    a, b, clock = make_sessions(
        SessionSettings(rekey_after_seconds=1000.0), SessionSettings(rekey_after_seconds=10.0)
    )
    clock.now += 10.0 + REKEY_GRACE_SECONDS + 1.0
    with pytest.raises(RemoteProtocolError, match="rekey mismatch"):
        deliver(a, b, Ping(nonce=1))


def test_rekey_without_notice_fails_authentication() -> None:
    a, b, _ = make_sessions()
    a._send_cipher.rekey()
    with pytest.raises(RemoteProtocolError, match="authentication"):
        deliver(a, b, Ping(nonce=1))
    assert b.state is SessionState.ERROR


def test_rekey_notice_with_wrong_epoch() -> None:
    a, b, _ = make_sessions()
    b.receive_data(forge(a, encode(Rekey(epoch=5))))
    with pytest.raises(RemoteProtocolError, match="announced epoch 5, expected 1"):
        b.next_event()


@pytest.mark.parametrize(
    ("plaintexts", "match"),
    [
        ([encode(HELLO)], "Hello inside a session"),
        ([encode(Chunk(1, 1, 2, b"x"))], "starts with chunk 1"),
        ([encode(Chunk(1, 0, 1, b"x"))], "of 2"),
        ([encode(Chunk(1, 0, 2, b"x")), encode(Ping(nonce=1))], "interleaved Ping"),
        ([encode(Chunk(1, 0, 2, b"x")), encode(Chunk(2, 1, 2, b"y"))], "out of order"),
        ([encode(Chunk(1, 0, 2, b"")), encode(Chunk(1, 1, 2, b"y"))], "holds 0 bytes"),
        ([encode(Chunk(1, 0, 2, b"\x00" * 8)), encode(Chunk(1, 1, 2, b"\x00" * 8))], "malformed"),
        ([encode(Chunk(1, 0, 10**6, b"x"))], "chunk 0 of"),
    ],
)
def test_forged_session_content_is_refused(plaintexts: list[bytes], match: str) -> None:
    a, b, _ = make_sessions()
    for plaintext in plaintexts:
        b.receive_data(forge(a, plaintext))
    with pytest.raises(RemoteProtocolError, match=match):
        drain(b)
    assert b.state is SessionState.ERROR


def test_frame_rate_limit() -> None:
    a, b, clock = make_sessions(responder_settings=SessionSettings(max_frames_per_second=5))
    for n in range(5):
        deliver(a, b, Ping(nonce=n))
    clock.now += 1.0
    for n in range(5):
        deliver(a, b, Ping(nonce=n))
    with pytest.raises(RemoteProtocolError, match="more than 5 frames in one second"):
        deliver(a, b, Ping(nonce=6))


def test_pending_bytes_limit() -> None:
    a, b, _ = make_sessions()
    wire = a.send(CodecFrames(1, 0.0, 1, os.urandom(400_000)))
    with pytest.raises(RemoteProtocolError, match="unconsumed bytes"):
        b.receive_data(wire)
    assert b.state is SessionState.ERROR


def test_bye_closes_both_sides() -> None:
    a, b, _ = make_sessions()
    assert deliver(a, b, Bye(ByeReason.SHUTDOWN)) == [Bye(ByeReason.SHUTDOWN)]
    assert a.state is SessionState.CLOSED and b.state is SessionState.CLOSED
    with pytest.raises(LocalProtocolError, match="CLOSED"):
        a.send(Ping(nonce=1))


def test_frame_reader_refuses_empty_frames_and_framing_refuses_oversize() -> None:
    reader = FrameReader()
    reader.receive_data(b"\x00\x00")
    with pytest.raises(RemoteProtocolError, match="empty frame"):
        reader.next_frame()
    with pytest.raises(LocalProtocolError):
        frame(b"x" * (MAX_FRAME + 1))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=3000), max_size=8),
    st.lists(st.integers(1, 5000), min_size=1, max_size=20),
)
def test_frame_reader_reassembles_any_slicing(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frame(m) for m in messages)
    reader = FrameReader()
    got: list[bytes] = []
    position = 0
    index = 0
    while position < len(wire):
        step = cuts[index % len(cuts)]
        reader.receive_data(wire[position : position + step])
        position += step
        index += 1
        while (item := reader.next_frame()) is not NEED_DATA:
            assert isinstance(item, bytes)
            got.append(item)
    assert got == messages


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=400))
def test_frame_reader_arbitrary_bytes_only_remote_error(data: bytes) -> None:
    reader = FrameReader()
    try:
        reader.receive_data(data)
        while reader.next_frame() is not NEED_DATA:
            pass
    except RemoteProtocolError:
        pass


def _feed_only_remote_errors(receiver: Session, data: bytes) -> None:
    try:
        receiver.receive_data(data)
        drain(receiver)
    except RemoteProtocolError:
        assert receiver.state is SessionState.ERROR


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=400))
def test_session_arbitrary_bytes_only_remote_error(data: bytes) -> None:
    _, b, _ = make_sessions()
    _feed_only_remote_errors(b, data)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_session_mutated_traffic_only_remote_error(data: st.DataObject) -> None:
    a, b, _ = make_sessions()
    wire = bytearray(
        a.send(Ping(nonce=data.draw(st.integers(0, 2**64 - 1))))
        + a.send(CodecFrames(1, 0.5, 2, data.draw(st.binary(max_size=100))))
    )
    position = data.draw(st.integers(0, len(wire) - 1))
    wire[position] ^= data.draw(st.integers(1, 255))
    _feed_only_remote_errors(b, bytes(wire[: data.draw(st.integers(0, len(wire)))]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_session_forged_plaintext_only_remote_error(plaintext: bytes) -> None:
    """Authentic frames with arbitrary content: reaches the capnp decoder and chunk logic."""
    a, b, _ = make_sessions()
    _feed_only_remote_errors(b, forge(a, plaintext))


def test_frame_header_is_two_byte_big_endian() -> None:
    a, _, _ = make_sessions()
    wire = a.send(Ping(nonce=1))
    (length,) = struct.unpack(">H", wire[:2])
    assert length == len(wire) - 2
