"""Every decoder that faces the network, as a fuzz target: bytes in, only parley's errors out.

A target is a function ``feed(data: bytes) -> None`` that runs one decoder on hostile bytes from
a fresh state, plus seeds (valid inputs) for mutation. The contract under test: a target
either accepts its input or raises :class:`~schemas.errors.RemoteProtocolError` (whose
subclasses include ``InvalidBundleError`` and the RPC's ``RpcProtocolError``; for the RPC an
``InvalidRequest`` event is the error *reply*). Anything else, a ``LocalProtocolError``
included, is a bug.

The hypothesis tests (``test_fuzz.py``) drive these with a few hundred inputs each; the bench
(``simulations/bench_reliability.py``) with :func:`fuzz_loop`: 100,000 mutations of the seeds
and random bytes per target, with tracemalloc before and after.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import msgpack

from codec.bundle import bundle_from_state, compute_content_hash, state_from_bundle
from codec.config import CodecConfig
from codec.model import expected_shapes, new_model, state_to_numpy
from daemon.rpc import NEED_DATA as RPC_NEED_DATA
from daemon.rpc import ConnectionClosed, RpcConnection
from handshake.framing import NEED_DATA, FrameReader, frame
from handshake.handshake import InitiatorHandshake, ResponderHandshake, TrustDecision
from handshake.noise import MAX_TRANSPORT_PLAINTEXT, NoiseXK, StaticIdentity, TransportCipher
from handshake.replay import ReplayCache
from handshake.session import Session, SessionState
from schemas.codec import decode, encode
from schemas.errors import RemoteProtocolError
from schemas.messages import (
    PROTOCOL_VERSION,
    Bye,
    ByeReason,
    CallEnd,
    CallStart,
    Caption,
    Chunk,
    CodecFrames,
    CodecSettings,
    Hello,
    Ping,
    Pong,
    TensorDtype,
    VoiceTraits,
    WeightsBundle,
    WordTime,
)

#: Events a session may yield per fuzz input before we stop pulling (a bound, not a limit).
MAX_EVENTS_PER_INPUT: Final = 64

_RESPONDER = StaticIdentity.generate()
_INITIATOR = StaticIdentity.generate()
_CLOCK: Callable[[], float] = time.monotonic


def _hello() -> Hello:
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=("fl/1", "call/1"),
        codec_architecture="csm-v1",
        codec_version_hash=bytes(range(32)),
    )


def _trusted(_key: bytes) -> TrustDecision:
    return TrustDecision.TRUSTED


# -- shared fixtures (built once) ----------------------------------------------------------------

_CONFIG = CodecConfig()
_STATE = state_to_numpy(new_model(_CONFIG))
_SHAPES = expected_shapes(_CONFIG)
_BUNDLE = bundle_from_state(
    _STATE, architecture_id=_CONFIG.architecture_id, round=3, sample_count=100
)


def sample_messages() -> list[object]:
    """One valid instance of every wire message kind."""
    voice = VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5)
    return [
        _hello(),
        _BUNDLE,
        CallStart(
            call_id=7,
            speaker_language="en",
            listener_language="pt",
            codec=CodecSettings(
                architecture_id="csm-v1",
                codec_version_hash=b"\x03" * 32,
                latent_dim=32,
                latent_bits=4,
                frame_rate_hz=25.0,
            ),
            voice=voice,
        ),
        CodecFrames(seq=1, start_time_s=0.5, frame_count=10, payload=bytes(range(200))),
        Caption(
            seq=2,
            start_s=0.0,
            end_s=1.5,
            text="hello there",
            language="en",
            final=True,
            words=(WordTime("hello", 0.0, 0.5), WordTime("there", 0.6, 1.5)),
            voice=voice,
        ),
        CallEnd(call_id=7, reason="hangup", summary_json='{"p50_ms": 12}'),
        Ping(nonce=5),
        Pong(nonce=5),
        Bye(reason=ByeReason.NORMAL),
        Chunk(message_id=1, index=0, count=2, data=b"abc"),
    ]


# -- targets --------------------------------------------------------------------------------------


def feed_frame_reader(data: bytes) -> None:
    """FrameReader, fed in slices (the split point is taken from the data itself)."""
    reader = FrameReader()
    cut = data[0] % (len(data) + 1) if data else 0
    for piece in (data[:cut], data[cut:]):
        if piece:
            reader.receive_data(piece)
        while not isinstance(reader.next_frame(), type(NEED_DATA)):
            pass


def feed_schema(data: bytes) -> None:
    decode(data)


def feed_msg1(data: bytes) -> None:
    responder = ResponderHandshake(
        identity=_RESPONDER,
        our_hello=_hello(),
        our_bundle=None,
        trust_check=_trusted,
        clock=_CLOCK,
        replay_cache=ReplayCache(clock=_CLOCK),
    )
    responder.consume_msg1(data)


# Fixed ephemerals (as the published vectors do) make every handshake message reproducible,
# so a recorded message 2, 3 or first transport message is a valid seed for a fresh object.
_INITIATOR_EPHEMERAL = bytes(range(100, 132))
_RESPONDER_EPHEMERAL = bytes(range(150, 182))


def _initiator() -> InitiatorHandshake:
    initiator = InitiatorHandshake(
        identity=_INITIATOR,
        responder_static_public=_RESPONDER.public,
        our_hello=_hello(),
        our_bundle=_BUNDLE,
        clock=_CLOCK,
    )
    initiator._noise = NoiseXK(
        initiator=True,
        identity=_INITIATOR,
        their_static_public=_RESPONDER.public,
        ephemeral_private=_INITIATOR_EPHEMERAL,
    )
    return initiator


def _responder() -> ResponderHandshake:
    responder = ResponderHandshake(
        identity=_RESPONDER,
        our_hello=_hello(),
        our_bundle=_BUNDLE,
        trust_check=_trusted,
        clock=_CLOCK,
    )
    responder._noise = NoiseXK(
        initiator=False,
        identity=_RESPONDER,
        their_static_public=None,
        ephemeral_private=_RESPONDER_EPHEMERAL,
    )
    return responder


def feed_msg2(data: bytes) -> None:
    initiator = _initiator()
    initiator.create_msg1()
    initiator.consume_msg2(data)


def feed_msg3(data: bytes) -> None:
    initiator, responder = _initiator(), _responder()
    responder.consume_msg1(initiator.create_msg1())
    responder.create_msg2()
    responder.consume_msg3(data)


@functools.cache
def _initiator_awaiting_first_transport() -> InitiatorHandshake:
    initiator, responder = _initiator(), _responder()
    responder.consume_msg1(initiator.create_msg1())
    initiator.consume_msg2(responder.create_msg2())
    initiator.create_msg3()
    return initiator


def feed_first_transport(data: bytes) -> None:
    """The initiator's last handshake step. Every handshake up to it is identical (fixed
    ephemerals), so one is run once and each input gets a shallow copy with fresh transport
    ciphers: the verb only touches the state and the ciphers, never the Noise object."""
    template = _initiator_awaiting_first_transport()
    assert template._ciphers is not None
    initiator = copy.copy(template)
    initiator._ciphers = tuple(  # type: ignore[assignment]
        TransportCipher(cipher._key, cipher.nonce) for cipher in template._ciphers
    )
    initiator.consume_first_transport(data)


def _session_pair() -> tuple[Session, TransportCipher]:
    """A receiving session and the cipher a (malicious but authenticated) peer sends with."""
    key_ab, key_ba = bytes(range(32)), bytes(range(1, 33))
    session = Session(
        send_cipher=TransportCipher(key_ab), receive_cipher=TransportCipher(key_ba), clock=_CLOCK
    )
    return session, TransportCipher(key_ba)


def _drain(session: Session) -> None:
    for _ in range(MAX_EVENTS_PER_INPUT):
        if session.state is not SessionState.OPEN or session.next_event() is NEED_DATA:
            return


def feed_session_wire(data: bytes) -> None:
    """Raw bytes on an established session's wire (an attacker on the path)."""
    session, _ = _session_pair()
    session.receive_data(data)
    _drain(session)


def feed_session_plaintext(data: bytes) -> None:
    """Authenticated garbage: ``data`` encrypted by the real peer key, so the session's own
    decoding (message kinds, chunks, rekey notices) sees it past the AEAD."""
    session, peer_cipher = _session_pair()
    session.receive_data(frame(peer_cipher.encrypt(data[:MAX_TRANSPORT_PLAINTEXT])))
    _drain(session)


def feed_bundle(data: bytes) -> None:
    """Bytes that decode to a WeightsBundle go through full validation."""
    message = decode(data)
    if isinstance(message, WeightsBundle):
        state_from_bundle(
            message, expected_architecture_id=_CONFIG.architecture_id, expected_shapes=_SHAPES
        )


def feed_rpc(data: bytes) -> None:
    connection = RpcConnection()
    cut = data[0] % (len(data) + 1) if data else 0
    for piece in (data[:cut], data[cut:], b""):
        connection.receive_data(piece)
        for _ in range(MAX_EVENTS_PER_INPUT):
            item = connection.next_event()
            if item is RPC_NEED_DATA or isinstance(item, ConnectionClosed):
                break


# -- seeds ----------------------------------------------------------------------------------------


def _handshake_seeds() -> dict[str, list[bytes]]:
    initiator, responder = _initiator(), _responder()
    msg1 = initiator.create_msg1()
    responder.consume_msg1(msg1)
    msg2 = responder.create_msg2()
    initiator.consume_msg2(msg2)
    msg3 = initiator.create_msg3()
    responder.consume_msg3(msg3)
    first = responder.create_first_transport()
    return {"msg1": [msg1], "msg2": [msg2], "msg3": [msg3], "first": [first]}


def _session_wire_seed() -> bytes:
    _, peer_cipher = _session_pair()
    sender = Session(
        send_cipher=peer_cipher, receive_cipher=TransportCipher(bytes(32)), clock=_CLOCK
    )
    return b"".join(
        sender.send(message)  # type: ignore[arg-type]
        for message in sample_messages()
        if not isinstance(message, Hello | Chunk)
    )


def _rpc_seeds() -> list[bytes]:
    return [
        msgpack.packb([0, 1, "status", []]),
        msgpack.packb([0, 2, "rounds", {"limit": 5}]),
        msgpack.packb([0, 3, "caption.submit", {"path": "/tmp/x.wav", "to": ["pt"]}]),
        msgpack.packb([0, 4, "round.start", {"wait": True}]) + msgpack.packb([0, 5, "jobs", []]),
    ]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    feed: Callable[[bytes], None]
    seeds: tuple[bytes, ...]
    #: A structured mutator that keeps the input valid except for one field (optional).
    structured: Callable[[random.Random], bytes] | None = None


def _mutated_bundle(rng: random.Random) -> bytes:
    """A bundle with one field changed and its content hash recomputed, so it gets past the
    hash check and into the deeper ones (shapes, dtypes, quantization, decompression)."""
    bundle = _BUNDLE
    tensors = list(bundle.tensors)
    index = rng.randrange(len(tensors))
    blob = tensors[index]
    choice = rng.randrange(8)
    if choice == 0:
        blob = dataclasses.replace(blob, shape=tuple(rng.randrange(0, 200) for _ in blob.shape))
    elif choice == 1:
        blob = dataclasses.replace(blob, dtype=TensorDtype(rng.randrange(3)))
    elif choice == 2:
        blob = dataclasses.replace(blob, scale=rng.choice([0.0, -1.0, 1e38, 1e-45, 3.4e38]))
    elif choice == 3:
        blob = dataclasses.replace(blob, zero_point=rng.uniform(-300, 300))
    elif choice == 4:
        data = bytearray(blob.data)
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        blob = dataclasses.replace(blob, data=bytes(data))
    elif choice == 5:
        blob = dataclasses.replace(blob, data=blob.data[: rng.randrange(len(blob.data) + 1)])
    elif choice == 6:
        blob = dataclasses.replace(blob, name=rng.choice(["", "x" * 300, tensors[0].name]))
    else:
        bundle = dataclasses.replace(bundle, compression=rng.choice(["lzma", "none", "gzip"]))
    tensors[index] = blob
    changed = dataclasses.replace(bundle, tensors=tuple(tensors), content_hash=b"")
    try:
        content_hash = compute_content_hash(changed)
    except (ValueError, TypeError, UnicodeEncodeError):
        content_hash = b"\x00" * 32
    try:
        return encode(dataclasses.replace(changed, content_hash=content_hash))
    except RemoteProtocolError:
        return encode(bundle)
    except Exception:  # the encoder refused our mutation (a local limit): send the original
        return encode(bundle)


def targets() -> list[Target]:
    handshake = _handshake_seeds()
    encoded = [encode(message) for message in sample_messages()]  # type: ignore[arg-type]
    wire = _session_wire_seed()
    receivable = [
        encode(message)  # type: ignore[arg-type]
        for message in sample_messages()
        if not isinstance(message, Hello | Chunk)
    ]
    return [
        Target("frame_reader", feed_frame_reader, (frame(b"x" * 40) * 3, wire)),
        Target("schema", feed_schema, tuple(encoded)),
        Target("handshake_msg1", feed_msg1, tuple(handshake["msg1"])),
        Target("handshake_msg2", feed_msg2, tuple(handshake["msg2"])),
        Target("handshake_msg3", feed_msg3, tuple(handshake["msg3"])),
        Target("handshake_first_transport", feed_first_transport, tuple(handshake["first"])),
        Target("session_wire", feed_session_wire, (wire,)),
        Target("session_plaintext", feed_session_plaintext, tuple(receivable)),
        Target("bundle", feed_bundle, (encode(_BUNDLE),), _mutated_bundle),
        Target("rpc", feed_rpc, tuple(_rpc_seeds())),
    ]


# -- mutation -------------------------------------------------------------------------------------


def mutate(rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    """One mutation of a seed (or pure random bytes), AFL-style."""
    choice = rng.randrange(10)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 512))
    data = bytearray(rng.choice(seeds))
    for _ in range(1 + rng.randrange(4)):
        op = rng.randrange(8)
        if not data:
            data += rng.randbytes(rng.randrange(1, 64))
            continue
        position = rng.randrange(len(data))
        if op == 0:
            data[position] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[position] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif op == 2:
            del data[position : position + rng.randrange(1, 16)]
        elif op == 3:
            data[position:position] = rng.randbytes(rng.randrange(1, 32))
        elif op == 4:
            del data[position:]
        elif op == 5:
            end = min(len(data), position + rng.randrange(1, 64))
            data[position:position] = data[position:end]
        elif op == 6:
            other = rng.choice(seeds)
            data[position:] = other[rng.randrange(len(other) + 1) :]
        else:
            width = rng.choice([2, 4, 8])
            value = rng.choice([0, 1, 2**16 - 1, 2**31 - 1, 2**32 - 1, 2**63 - 1])
            data[position : position + width] = value.to_bytes(8, "little")[:width]
    return bytes(data)


def inputs(target: Target, count: int, *, seed: int = 0) -> Iterator[bytes]:
    rng = random.Random(seed)
    for index in range(count):
        if target.structured is not None and index % 2:
            yield target.structured(rng)
        else:
            yield mutate(rng, target.seeds)


@dataclass(slots=True)
class FuzzReport:
    inputs: int
    unexpected_exceptions: int
    first_unexpected: str | None
    seconds: float
    traced_kib_before: float
    traced_kib_after: float

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def fuzz_loop(target: Target, count: int, *, seed: int = 0) -> FuzzReport:
    """Feed ``count`` inputs; count anything but RemoteProtocolError. Memory via tracemalloc:
    the heap still held after the run (after a GC) compared with the baseline taken once the
    first 1% of inputs warmed the caches."""
    unexpected = 0
    first: str | None = None
    warmup = max(1, count // 100)
    started = time.monotonic()
    before = after = 0.0
    tracing = tracemalloc.is_tracing()
    for index, data in enumerate(inputs(target, count, seed=seed)):
        if index == warmup:
            gc.collect()
            if not tracing:
                tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0] / 1024
        try:
            target.feed(data)
        except RemoteProtocolError:
            pass
        except Exception as error:
            unexpected += 1
            if first is None:
                first = f"{type(error).__name__}: {error} on {data[:64].hex()}"
    if tracemalloc.is_tracing():
        # noiseprotocol's objects hold reference cycles: collected garbage is not retained.
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] / 1024
        if not tracing:
            tracemalloc.stop()
    return FuzzReport(
        inputs=count,
        unexpected_exceptions=unexpected,
        first_unexpected=first,
        seconds=time.monotonic() - started,
        traced_kib_before=before,
        traced_kib_after=after,
    )


__all__ = ["FuzzReport", "Target", "fuzz_loop", "inputs", "mutate", "sample_messages", "targets"]


if __name__ == "__main__":  # quick manual run: python -m simulations.reliability.fuzz_targets
    for item in targets():
        report = fuzz_loop(item, 2000)
        print(item.name, report.as_dict())
