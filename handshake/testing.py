"""Drive both handshake roles in memory, no I/O: for tests, benchmarks and simulations.

Like ``trio.testing``, this ships with the package so that other packages' tests (the node, the
FL simulation) can build real sessions without sockets.
"""

from __future__ import annotations

from handshake.handshake import HandshakeResult, InitiatorHandshake, ResponderHandshake


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
