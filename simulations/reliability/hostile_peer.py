"""A scripted malicious peer that speaks the real protocol (for the reliability tests and bench).

It is built from the package's own sans-IO objects (:class:`InitiatorHandshake`,
:class:`Session`, :class:`FrameReader`) over raw trio sockets, so every attack is a real
parley message with exactly one thing wrong: a length prefix over the cap, a handshake left
half-open, message 1 replayed or flooded, a transport frame with a flipped byte, a bundle with
NaN / Inf / a huge norm / the wrong architecture (all with a valid content hash, so they pass
the cheap checks and reach validation or aggregation).

The flood also runs as its own process, so the attacker's CPU does not count against the node
under test: ``python -m simulations.reliability.hostile_peer flood --host H --port P --source S
--key HEX --rate 1000 --seconds 2`` prints ``{"connections": N, "seconds": T}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import trio

from codec.bundle import bundle_from_state, compute_content_hash
from handshake.framing import NEED_DATA, FrameReader, frame
from handshake.handshake import InitiatorHandshake
from handshake.noise import StaticIdentity
from handshake.session import Session
from schemas.errors import ProtocolError
from schemas.messages import PROTOCOL_VERSION, Hello, TensorBlob, TensorDtype, WeightsBundle

RECEIVE_SIZE = 65536

State = Mapping[str, npt.NDArray[np.float32]]


def hostile_hello(architecture_id: str = "csm") -> Hello:
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=("fl/1", "call/1"),
        codec_architecture=architecture_id,
        codec_version_hash=b"\x01" * 32,
    )


async def open_tcp(host: str, port: int, *, source: str | None = None) -> trio.SocketStream:
    """A TCP connection, from ``source`` (e.g. ``127.0.0.2``) when given."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        if source is not None:
            await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def read_until_closed(stream: trio.abc.Stream, *, limit_s: float) -> tuple[bool, bytes]:
    """Read until the peer closes (True) or ``limit_s`` passes (False); what arrived."""
    received = bytearray()
    with trio.move_on_after(limit_s):
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return True, bytes(received)
            if not data:
                return True, bytes(received)
            received += data
    return False, bytes(received)


async def _next_frame(stream: trio.abc.Stream, reader: FrameReader) -> bytes:
    while True:
        item = reader.next_frame()
        if isinstance(item, bytes):
            return item
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise EOFError("the node closed the connection")
        reader.receive_data(bytes(data))


@dataclasses.dataclass
class RawSession:
    """A session established by hand: the raw stream and the sans-IO session on top of it."""

    stream: trio.SocketStream
    session: Session
    reader_leftover: bytes
    their_bundle: WeightsBundle | None

    async def send_message_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_one(self, *, limit_s: float) -> object:
        """The next message, or the exception the session raised / EOF as a string."""
        session = self.session
        if self.reader_leftover:
            session.receive_data(self.reader_leftover)
            self.reader_leftover = b""
        with trio.move_on_after(limit_s):
            while True:
                try:
                    event = session.next_event()
                except ProtocolError as error:
                    return error
                if event is not NEED_DATA:
                    return event
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, OSError):
                    return "reset"
                if not data:
                    return "eof"
                session.receive_data(bytes(data))
        return "timeout"


async def handshake(
    host: str,
    port: int,
    *,
    identity: StaticIdentity,
    responder_key: bytes,
    hello: Hello,
    bundle: WeightsBundle | None,
    source: str | None = None,
) -> RawSession:
    """Run the initiator's four messages by hand; the session continues on the raw socket."""
    stream = await open_tcp(host, port, source=source)
    reader = FrameReader()
    handshake = InitiatorHandshake(
        identity=identity,
        responder_static_public=responder_key,
        our_hello=hello,
        our_bundle=bundle,
        clock=trio.current_time,
    )
    await stream.send_all(frame(handshake.create_msg1()))
    handshake.consume_msg2(await _next_frame(stream, reader))
    await stream.send_all(frame(handshake.create_msg3()))
    their_bundle = handshake.consume_first_transport(await _next_frame(stream, reader))
    result = handshake.split()
    return RawSession(stream, result.session, reader.take_remaining(), their_bundle)


def message1(responder_key: bytes, *, hello: Hello | None = None) -> bytes:
    """A fresh, valid handshake message 1 (framed) for the responder ``responder_key``."""
    initiator = InitiatorHandshake(
        identity=StaticIdentity.generate(),
        responder_static_public=responder_key,
        our_hello=hello or hostile_hello(),
        our_bundle=None,
        clock=time.monotonic,
    )
    return frame(initiator.create_msg1())


def tamper(data: bytes, *, offset: int = -1) -> bytes:
    """``data`` with one bit of one byte flipped (default: the last byte, inside the tag)."""
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


def oversized_caption_envelope(text_chars: int = 1_000_000) -> bytes:
    """A Caption envelope whose text is ``text_chars`` long: built with capnp directly, since
    our own encoder refuses text over ``MAX_TEXT_CHARS`` (a peer's encoder need not)."""
    from schemas import codec

    envelope = codec._ENVELOPE.new_message()
    envelope._set("version", PROTOCOL_VERSION)
    caption = envelope._get("body").init("caption")
    caption._set("seq", 1)
    caption._set("startS", 0.0)
    caption._set("endS", 1.0)
    caption._set("text", "a" * text_chars)
    caption._set("language", "en")
    caption._set("final", True)
    caption.init("words", 0)
    voice = caption.init("voice")
    voice._set("medianPitchHz", 120.0)
    voice._set("speakingRateWps", 2.0)
    data: bytes = envelope.to_bytes()
    return data


def seal_chunked(session: Session, plaintext: bytes) -> bytes:
    """Frames carrying ``plaintext`` as a chunked message, as a real session sends it."""
    return session._seal_chunked(plaintext)


# -- hostile bundles ---------------------------------------------------------------------------


def _rehash(bundle: WeightsBundle) -> WeightsBundle:
    unsigned = dataclasses.replace(bundle, content_hash=b"")
    return dataclasses.replace(bundle, content_hash=compute_content_hash(unsigned))


def bundle_with_value(
    state: State, architecture_id: str, value: float, *, sample_count: int = 10
) -> WeightsBundle:
    """A bundle of ``state`` whose smallest tensor holds ``value`` (NaN, Inf) in one element,
    sent as float32 with a valid content hash, so only the finiteness check can catch it."""
    base = bundle_from_state(
        dict(state), architecture_id=architecture_id, round=1, sample_count=sample_count
    )
    target = min(state, key=lambda name: (np.asarray(state[name]).size, name))
    poisoned = np.array(state[target], dtype="<f4", copy=True)
    poisoned.flat[0] = value
    tensors = tuple(
        TensorBlob(
            name=blob.name,
            shape=blob.shape,
            dtype=TensorDtype.FLOAT32,
            scale=1.0,
            zero_point=0.0,
            data=zlib.compress(poisoned.tobytes()),
        )
        if blob.name == target
        else blob
        for blob in base.tensors
    )
    assert base.compression == "zlib"
    return _rehash(dataclasses.replace(base, tensors=tensors))


def huge_norm_bundle(
    state: State, architecture_id: str, *, factor: float = 1e4, sample_count: int = 1000
) -> WeightsBundle:
    """Valid, finite weights scaled by ``factor``: only norm clipping protects the model."""
    scaled = {
        name: (np.asarray(value) * factor).astype(np.float32) for name, value in state.items()
    }
    return bundle_from_state(
        scaled, architecture_id=architecture_id, round=1, sample_count=sample_count
    )


def wrong_architecture_bundle(state: State) -> WeightsBundle:
    return bundle_from_state(dict(state), architecture_id="evil-arch-v0", round=1, sample_count=10)


# -- the flood, as a process -------------------------------------------------------------------


async def flood(
    host: str, port: int, *, source: str, responder_key: bytes, rate: float, seconds: float
) -> int:
    """Open ``rate`` connections a second for ``seconds``, each sending a fresh message 1 and
    closing at once; returns how many were opened."""
    opened = 0
    interval = 1.0 / rate
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            try:
                stream = await open_tcp(host, port, source=source)
            except OSError:
                return
            try:
                await stream.send_all(message1(responder_key))
            except (trio.BrokenResourceError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

        while trio.current_time() - start < seconds:
            nursery.start_soon(one)
            opened += 1
            next_at = start + opened * interval
            await trio.sleep(max(0.0, next_at - trio.current_time()))
    return opened


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostile_peer")
    sub = parser.add_subparsers(dest="command", required=True)
    flood_parser = sub.add_parser("flood")
    flood_parser.add_argument("--host", required=True)
    flood_parser.add_argument("--port", type=int, required=True)
    flood_parser.add_argument("--source", required=True)
    flood_parser.add_argument("--key", required=True)
    flood_parser.add_argument("--rate", type=float, default=1000.0)
    flood_parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    opened = trio.run(
        lambda: flood(
            args.host,
            args.port,
            source=args.source,
            responder_key=bytes.fromhex(args.key),
            rate=args.rate,
            seconds=args.seconds,
        )
    )
    json.dump({"connections": opened, "seconds": time.monotonic() - started}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
