"""The XK handshake state machines as in-memory pairs (no sockets)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handshake.handshake import (
    HandshakeRejected,
    HandshakeState,
    InitiatorHandshake,
    ResponderHandshake,
    TrustDecision,
)
from handshake.noise import (
    MAX_NOISE_MESSAGE,
    NoiseXK,
    StaticIdentity,
    remote_static_public_of,
)
from handshake.replay import ReplayCache
from handshake.testing import complete_in_memory
from schemas.codec import encode
from schemas.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from schemas.messages import (
    PROTOCOL_VERSION,
    Bye,
    ByeReason,
    CodecFrames,
    Hello,
    Ping,
    TensorBlob,
    TensorDtype,
    WeightsBundle,
)

INITIATOR_ID = StaticIdentity(bytes(range(32)))
RESPONDER_ID = StaticIdentity(bytes(range(100, 132)))
OTHER_ID = StaticIdentity(bytes(range(200, 232)))
HELLO_I = Hello(PROTOCOL_VERSION, ("calls", "fl"), "csm-80-32-80", b"\x11" * 32)
HELLO_R = Hello(PROTOCOL_VERSION, ("calls",), "csm-80-32-80", b"\x22" * 32)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_bundle(size: int, tag: int) -> WeightsBundle:
    return WeightsBundle(
        architecture_id="csm-80-32-80",
        round=tag,
        sample_count=1234,
        compression="none",
        tensors=(
            TensorBlob("encoder.weight", (size,), TensorDtype.INT8, 0.01, 0.0, os.urandom(size)),
        ),
        content_hash=bytes([tag]) * 32,
    )


BUNDLE_I = make_bundle(50_000, 1)
BUNDLE_R = make_bundle(50_000, 2)


def make_pair(
    *,
    trust: TrustDecision = TrustDecision.TRUSTED,
    initiator_bundle: WeightsBundle | None = BUNDLE_I,
    responder_bundle: WeightsBundle | None = BUNDLE_R,
    responder_key: bytes = RESPONDER_ID.public,
    initiator_prologue: bytes = b"parley/1",
    replay_cache: ReplayCache | None = None,
    seen: list[bytes] | None = None,
) -> tuple[InitiatorHandshake, ResponderHandshake]:
    clock = FakeClock()

    def trust_check(key: bytes) -> TrustDecision:
        if seen is not None:
            seen.append(key)
        return trust

    initiator = InitiatorHandshake(
        identity=INITIATOR_ID,
        responder_static_public=responder_key,
        our_hello=HELLO_I,
        our_bundle=initiator_bundle,
        clock=clock,
        prologue=initiator_prologue,
    )
    responder = ResponderHandshake(
        identity=RESPONDER_ID,
        our_hello=HELLO_R,
        our_bundle=responder_bundle,
        trust_check=trust_check,
        clock=clock,
        replay_cache=replay_cache,
    )
    return initiator, responder


def test_full_handshake_with_50kb_bundles_both_ways() -> None:
    seen: list[bytes] = []
    initiator, responder = make_pair(seen=seen)
    msg1 = initiator.create_msg1()
    assert responder.consume_msg1(msg1) == HELLO_I
    msg2 = responder.create_msg2()
    assert initiator.consume_msg2(msg2) == HELLO_R
    msg3 = initiator.create_msg3()
    # Messages 1-2 carry Hello only; the 50 KB bundle travels in message 3, within the cap.
    assert len(msg1) < 200 and len(msg2) < 200
    assert 50_000 < len(msg3) <= MAX_NOISE_MESSAGE
    assert responder.consume_msg3(msg3) == BUNDLE_I
    assert seen == [INITIATOR_ID.public]  # the trust check ran on the initiator's real key
    first = responder.create_first_transport()
    assert 50_000 < len(first) <= MAX_NOISE_MESSAGE
    assert initiator.consume_first_transport(first) == BUNDLE_R
    ours, theirs = initiator.split(), responder.split()
    assert ours.their_static_public == RESPONDER_ID.public
    assert theirs.their_static_public == INITIATOR_ID.public
    assert ours.their_hello == HELLO_R and theirs.their_hello == HELLO_I
    assert ours.their_bundle == BUNDLE_R and theirs.their_bundle == BUNDLE_I
    assert ours.handshake_hash == theirs.handshake_hash and len(ours.handshake_hash) == 32
    assert theirs.trust_decision is TrustDecision.TRUSTED and ours.trust_decision is None
    assert initiator.state is HandshakeState.SPLIT and responder.state is HandshakeState.SPLIT
    # The sessions talk to each other, both ways.
    theirs.session.receive_data(ours.session.send(Ping(nonce=5)))
    assert theirs.session.next_event() == Ping(nonce=5)
    frames = CodecFrames(seq=1, start_time_s=0.1, frame_count=10, payload=b"\x01" * 100)
    ours.session.receive_data(theirs.session.send(frames))
    assert ours.session.next_event() == frames


def test_rejected_initiator_gets_no_weights_and_a_bye() -> None:
    initiator, responder = make_pair(trust=TrustDecision.REJECT)
    responder.consume_msg1(initiator.create_msg1())
    initiator.consume_msg2(responder.create_msg2())
    # The responder does not keep a rejected peer's weights.
    assert responder.consume_msg3(initiator.create_msg3()) is None
    first = responder.create_first_transport()
    assert responder.state is HandshakeState.CLOSED
    assert len(first) < 100  # a Bye, certainly no 50 KB bundle
    with pytest.raises(HandshakeRejected) as caught:
        initiator.consume_first_transport(first)
    assert caught.value.reason is ByeReason.NOT_TRUSTED
    assert isinstance(caught.value, RemoteProtocolError)
    assert initiator.state is HandshakeState.CLOSED
    with pytest.raises(LocalProtocolError):
        responder.split()
    with pytest.raises(LocalProtocolError):
        initiator.split()


def test_known_peer_continues_without_our_weights() -> None:
    initiator, responder = make_pair(trust=TrustDecision.KNOWN)
    ours, theirs = complete_in_memory(initiator, responder)
    assert ours.their_bundle is None  # the responder sent none
    assert theirs.their_bundle == BUNDLE_I  # it still needs the caller's codec
    assert theirs.trust_decision is TrustDecision.KNOWN


def test_initiator_without_bundle_sends_none() -> None:
    initiator, responder = make_pair(initiator_bundle=None)
    ours, theirs = complete_in_memory(initiator, responder)
    assert theirs.their_bundle is None and ours.their_bundle == BUNDLE_R


def _messages_until(stage: int) -> tuple[InitiatorHandshake, ResponderHandshake, bytes]:
    """A pair advanced to just before message ``stage`` is consumed, and that message."""
    initiator, responder = make_pair()
    message = initiator.create_msg1()
    if stage == 1:
        return initiator, responder, message
    responder.consume_msg1(message)
    message = responder.create_msg2()
    if stage == 2:
        return initiator, responder, message
    initiator.consume_msg2(message)
    message = initiator.create_msg3()
    if stage == 3:
        return initiator, responder, message
    responder.consume_msg3(message)
    return initiator, responder, responder.create_first_transport()


def _consumer(
    initiator: InitiatorHandshake, responder: ResponderHandshake, stage: int
) -> tuple[Callable[[bytes], object], InitiatorHandshake | ResponderHandshake]:
    if stage == 1:
        return responder.consume_msg1, responder
    if stage == 2:
        return initiator.consume_msg2, initiator
    if stage == 3:
        return responder.consume_msg3, responder
    return initiator.consume_first_transport, initiator


def _assert_rejected(stage: int, mutate: Callable[[bytes], bytes], match: str) -> None:
    initiator, responder, message = _messages_until(stage)
    consume, receiver = _consumer(initiator, responder, stage)
    with pytest.raises(RemoteProtocolError, match=match):
        consume(mutate(message))
    assert receiver.state is HandshakeState.ERROR
    # Every later call refuses, the legitimate message included.
    with pytest.raises(LocalProtocolError, match="ERROR"):
        consume(message)
    with pytest.raises(LocalProtocolError):
        receiver.split()


STAGES = [1, 2, 3, 4]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_byte_in_every_message(stage: int, where: str) -> None:
    def flip(message: bytes) -> bytes:
        position = {"first": 0, "middle": len(message) // 2, "last": len(message) - 1}[where]
        data = bytearray(message)
        data[position] ^= 0x01
        return bytes(data)

    _assert_rejected(stage, flip, "failed|authentic|malformed")


@pytest.mark.parametrize("stage", STAGES)
def test_truncated_message(stage: int) -> None:
    _assert_rejected(stage, lambda message: message[: len(message) - 1], "failed|truncated")
    _assert_rejected(stage, lambda message: message[:20], "truncated|failed")


@pytest.mark.parametrize("stage", STAGES)
def test_oversize_message(stage: int) -> None:
    _assert_rejected(stage, lambda message: message + bytes(MAX_NOISE_MESSAGE), "bytes")


def test_wrong_prologue() -> None:
    initiator, responder = make_pair(initiator_prologue=b"parley/2")
    with pytest.raises(RemoteProtocolError):
        responder.consume_msg1(initiator.create_msg1())
    assert responder.state is HandshakeState.ERROR


def test_wrong_responder_key() -> None:
    initiator, responder = make_pair(responder_key=OTHER_ID.public)
    with pytest.raises(RemoteProtocolError):
        responder.consume_msg1(initiator.create_msg1())
    assert responder.state is HandshakeState.ERROR


def test_replayed_message1_on_a_new_responder_never_completes() -> None:
    initiator, responder = make_pair()
    recorded = initiator.create_msg1()
    complete_tail = responder.consume_msg1(recorded)
    assert complete_tail == HELLO_I
    # An attacker replays message 1 to a fresh responder: XK cannot tell at message 1 ...
    _, victim = make_pair()
    assert victim.consume_msg1(recorded) == HELLO_I
    victim.create_msg2()
    # ... but without the initiator's keys no message 3 works: garbage, or a real message 3
    # from the original run (bound to the other responder ephemeral), is refused.
    with pytest.raises(RemoteProtocolError):
        victim.consume_msg3(os.urandom(200))
    assert victim.state is HandshakeState.ERROR
    _, victim2 = make_pair()
    victim2.consume_msg1(recorded)
    victim2.create_msg2()
    initiator.consume_msg2(responder.create_msg2())
    with pytest.raises(RemoteProtocolError):
        victim2.consume_msg3(initiator.create_msg3())
    assert victim2.state is HandshakeState.ERROR


def test_replay_cache_drops_exact_replays_early() -> None:
    clock = FakeClock()
    cache = ReplayCache(clock=clock, capacity=2, ttl_seconds=60.0)
    initiator, responder = make_pair(replay_cache=cache)
    recorded = initiator.create_msg1()
    responder.consume_msg1(recorded)
    _, victim = make_pair(replay_cache=cache)
    with pytest.raises(RemoteProtocolError, match="replay"):
        victim.consume_msg1(recorded)
    assert victim.state is HandshakeState.ERROR
    # TTL: forgotten after it expires.
    clock.now += 61.0
    cache.check_fresh(recorded)
    # Capacity: the oldest goes first.
    cache.remember(b"a" * 32)
    cache.remember(b"b" * 32)
    cache.remember(b"c" * 32)
    assert len(cache) == 2
    cache.check_fresh(b"a" * 32 + b"rest")
    with pytest.raises(RemoteProtocolError):
        cache.check_fresh(b"c" * 32 + b"rest")


def test_garbage_message1_is_not_remembered() -> None:
    cache = ReplayCache(clock=FakeClock())
    _, responder = make_pair(replay_cache=cache)
    with pytest.raises(RemoteProtocolError):
        responder.consume_msg1(os.urandom(80))
    assert len(cache) == 0


def test_out_of_order_calls_move_to_error() -> None:
    initiator, responder = make_pair()
    with pytest.raises(LocalProtocolError, match="cannot create message 3 in state START"):
        initiator.create_msg3()
    assert initiator.state is HandshakeState.ERROR
    with pytest.raises(LocalProtocolError):
        initiator.create_msg1()
    with pytest.raises(LocalProtocolError):
        responder.create_msg2()
    assert responder.state is HandshakeState.ERROR


def test_message1_must_be_hello_with_our_version() -> None:
    for payload, match in [
        (encode(Bye(ByeReason.NORMAL)), "must carry Hello"),
        (encode(Hello(9, (), "x", b"")), "protocol version 9"),
    ]:
        noise = NoiseXK(
            initiator=True, identity=INITIATOR_ID, their_static_public=RESPONDER_ID.public
        )
        _, responder = make_pair()
        with pytest.raises(RemoteProtocolError, match=match):
            responder.consume_msg1(noise.write(payload))


def test_bundle_too_large_for_message3_is_local_error() -> None:
    initiator, responder = make_pair(initiator_bundle=make_bundle(70_000, 3))
    responder.consume_msg1(initiator.create_msg1())
    initiator.consume_msg2(responder.create_msg2())
    with pytest.raises(LocalProtocolError, match="message 3 holds at most"):
        initiator.create_msg3()
    assert initiator.state is HandshakeState.ERROR


def test_remote_static_public_isolation() -> None:
    """The one function reading noiseprotocol's internal remote static key."""
    initiator = NoiseXK(
        initiator=True, identity=INITIATOR_ID, their_static_public=RESPONDER_ID.public
    )
    responder = NoiseXK(initiator=False, identity=RESPONDER_ID, their_static_public=None)
    assert initiator.their_static_public() == RESPONDER_ID.public
    assert responder.their_static_public() is None
    responder.read(initiator.write(b""))
    initiator.read(responder.write(b""))
    assert responder.their_static_public() is None  # not yet sent (the `s` token is message 3)
    responder.read(initiator.write(b""))
    # noiseprotocol has dropped its own handshake_state reference by now; ours still works.
    assert not hasattr(responder._connection.noise_protocol, "handshake_state")
    assert responder.their_static_public() == INITIATOR_ID.public
    assert remote_static_public_of(object()) is None


def test_trust_check_error_propagates_and_fails_the_handshake() -> None:
    initiator, responder = make_pair()

    def broken(key: bytes) -> TrustDecision:
        raise KeyError("peer table unavailable")

    responder._trust_check = broken
    responder.consume_msg1(initiator.create_msg1())
    initiator.consume_msg2(responder.create_msg2())
    with pytest.raises(KeyError):
        responder.consume_msg3(initiator.create_msg3())
    assert responder.state is HandshakeState.ERROR


def _only_remote_errors(consume: Callable[[bytes], object], data: bytes) -> None:
    try:
        consume(data)
    except RemoteProtocolError:
        return
    except ProtocolError as exc:  # pragma: no cover - reported as a failure
        raise AssertionError(f"{type(exc).__name__} for peer bytes: {exc}") from exc


@settings(max_examples=300, deadline=None)
@given(stage=st.sampled_from(STAGES), data=st.binary(max_size=300))
def test_arbitrary_bytes_to_each_consumer_only_remote_error(stage: int, data: bytes) -> None:
    initiator, responder, _ = _messages_until(stage)
    consume, _ = _consumer(initiator, responder, stage)
    _only_remote_errors(consume, data)


@settings(max_examples=300, deadline=None)
@given(stage=st.sampled_from(STAGES), edits=st.data())
def test_mutated_real_messages_only_remote_error(stage: int, edits: st.DataObject) -> None:
    initiator, responder, message = _messages_until(stage)
    consume, _ = _consumer(initiator, responder, stage)
    data = bytearray(message)
    position = edits.draw(st.integers(0, len(data) - 1))
    data[position] ^= edits.draw(st.integers(1, 255))  # independent of the random content
    data = data[: edits.draw(st.integers(0, len(data)))]
    with pytest.raises(RemoteProtocolError):
        consume(bytes(data))
