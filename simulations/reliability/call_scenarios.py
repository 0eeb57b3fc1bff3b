"""A hostile caller against the node's call handler (``daemon.calls``), for the test and bench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from codec.latent import payload_size
from daemon.calls import make_call_handler
from daemon.database import PeerSource
from daemon.node import NodeOptions, open_node
from handshake.noise import StaticIdentity
from schemas.messages import Bye, CallEnd, CodecFrames
from simulations.node_helpers import loopback_config, make_home
from simulations.reliability import hostile_peer
from simulations.reliability.scenarios import (
    CaseResult,
    call_start_on_our_codec,
    honest_handshake,
)


async def case_call_flood(root: Path, *, seconds_of_audio: int = 60) -> CaseResult:
    """A trusted caller sends CallStart and then ``seconds_of_audio`` of codec frames at once,
    far faster than real time; the listener must end the call, count ``call_flood`` and close
    the session, and still serve an honest handshake."""
    home, _ = make_home(root, "listener")
    handlers: list[Any] = []

    async def serve(session: Any, info: Any) -> None:
        await handlers[0](session, info)

    config = loopback_config(name="listener", mdns=False)
    async with open_node(home, config, NodeOptions(listen_port=0, session_handler=serve)) as node:
        handlers.append(make_call_handler(node))
        caller = StaticIdentity.generate()
        node.peers.observe(caller.public, name="caller", address=None, source=PeerSource.STATIC)
        node.peers.trust(caller.public.hex())
        ours = node.codecs.current()
        codec = ours.config
        raw = await hostile_peer.handshake(
            "127.0.0.1",
            node.listen_port,
            identity=caller,
            responder_key=node.identity.public_key,
            hello=node.hello(),
            bundle=ours.bundle,
        )
        start = call_start_on_our_codec(node, call_id=42)
        frames = int(codec.frame_rate_hz)  # one second of audio per message
        size = payload_size(frames, codec.latent_dim, codec.latent_bits)
        messages = [
            CodecFrames(
                seq=index, start_time_s=float(index), frame_count=frames, payload=bytes(size)
            )
            for index in range(seconds_of_audio)
        ]
        wire = raw.session.send(start) + b"".join(raw.session.send(m) for m in messages)
        ended: list[CallEnd] = []
        closing: object = None
        try:
            await raw.stream.send_all(wire)
        except trio.BrokenResourceError:
            # The listener hung up while we were still writing: the flood was cut short.
            closing = "reset"
        with trio.fail_after(120):
            while closing is None:
                answer = await raw.receive_one(limit_s=120)
                if isinstance(answer, CallEnd):
                    ended.append(answer)
                elif isinstance(answer, Bye):
                    closing = "bye"
                elif isinstance(answer, str | Exception):
                    closing = answer  # "eof", "reset" or the session's own error
        await trio.aclose_forcefully(raw.stream)
        honest = await honest_handshake(node)
        counted = node.connections.stats.rejected.get("call_flood", 0)
    return CaseResult(
        counted,
        honest,
        {
            "call_end_reason": ended[-1].reason if ended else None,
            "closing": closing if isinstance(closing, str) else repr(closing),
        },
    )
