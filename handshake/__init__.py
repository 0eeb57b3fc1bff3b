"""Noise XK handshake and encrypted session (sans-IO), plus the trio stream adapter.

Sans-IO core (no trio): :mod:`handshake.noise` (the noiseprotocol wrapper),
:mod:`handshake.handshake` (the two state machines), :mod:`handshake.session` (framing,
chunking, rekey, key renewal and expiry, limits), :mod:`handshake.replay` (message-1 replay
cache), :mod:`handshake.framing`, :mod:`handshake.budget` (received bytes held, node-wide). The trio
shell is :mod:`handshake.stream`, imported on its own so that the core stays importable
without trio.
"""

from handshake.budget import MemoryBudget
from handshake.framing import NEED_DATA, FrameReader, NeedData, frame
from handshake.handshake import (
    HandshakeRejected,
    HandshakeResult,
    HandshakeState,
    InitiatorHandshake,
    ResponderHandshake,
    TrustCheck,
    TrustDecision,
)
from handshake.noise import PROLOGUE, PROTOCOL_NAME, StaticIdentity
from handshake.replay import ReplayCache
from handshake.session import (
    RehandshakeKeys,
    Session,
    SessionExpiredError,
    SessionSettings,
    SessionState,
)

__all__ = [
    "NEED_DATA",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "FrameReader",
    "HandshakeRejected",
    "HandshakeResult",
    "HandshakeState",
    "InitiatorHandshake",
    "MemoryBudget",
    "NeedData",
    "RehandshakeKeys",
    "ReplayCache",
    "ResponderHandshake",
    "Session",
    "SessionExpiredError",
    "SessionSettings",
    "SessionState",
    "StaticIdentity",
    "TrustCheck",
    "TrustDecision",
    "frame",
]
