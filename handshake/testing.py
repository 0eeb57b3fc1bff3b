"""Drive both handshake roles in memory, no I/O: for tests, benchmarks and simulations.

Like ``trio.testing``, this ships with the package so that other packages' tests (the node, the
FL simulation) can build real sessions without sockets.
"""

from __future__ import annotations

import trio
import trio.testing

from handshake.handshake import (
    HandshakeResult,
    InitiatorHandshake,
    ResponderHandshake,
    TrustDecision,
)
from handshake.noise import StaticIdentity
from handshake.stream import SessionStream, accept_session, initiate_session
from schemas.messages import Hello, WeightsBundle


def complete_in_memory(
    initiator: InitiatorHandshake, responder: ResponderHandshake
) -> tuple[HandshakeResult, HandshakeResult]:
    """Run the four messages between the two objects; return (initiator's, responder's) results.

    Raises whatever the handshake raises (e.g. :class:`~handshake.handshake.HandshakeRejected`
    for the initiator when the responder rejects it).
    """
    responder.consume_msg1(initiator.create_msg1())
    initiator.consume_msg2(responder.create_msg2())
    responder.consume_msg3(initiator.create_msg3())
    initiator.consume_first_transport(responder.create_first_transport())
    return initiator.split(), responder.split()


async def sessions_in_memory(
    *,
    initiator: StaticIdentity,
    responder: StaticIdentity,
    hello: Hello,
    initiator_bundle: WeightsBundle | None = None,
) -> tuple[SessionStream, SessionStream]:
    """Both sides of a session over trio's in-memory streams: (initiator's, responder's).

    Both say ``hello``; the responder trusts every initiator and offers no bundle.
    """
    left, right = trio.testing.memory_stream_pair()
    accepted: list[SessionStream] = []

    async def accept() -> None:
        accepted.append(
            await accept_session(
                right,
                identity=responder,
                our_hello=hello,
                our_bundle=None,
                trust_check=lambda key: TrustDecision.TRUSTED,
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        ours = await initiate_session(
            left,
            identity=initiator,
            responder_static_public=responder.public,
            our_hello=hello,
            our_bundle=initiator_bundle,
        )
    return ours, accepted[0]
