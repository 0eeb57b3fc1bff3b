"""The one error root of parley's wire layer.

Every failure that crosses the wire is split by whose fault it is, as h11 and wsproto do:

* :class:`LocalProtocolError`: *we* tried something the protocol forbids (sending on a closed
  session, a payload over a limit). A bug or misuse on our side; the caller should not retry
  the same call.
* :class:`RemoteProtocolError`: the *peer* sent something invalid (bad bytes, a tampered
  ciphertext, an unknown message tag). The caller closes that one session and may ban or
  rate-limit the address; nothing else in the node changes.

Dependency exceptions (``cryptography``'s ``InvalidTag``, capnp and msgpack decode errors) are
translated into these at the boundary, so callers only ever catch parley's own types.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every wire-layer error raised by parley."""


class LocalProtocolError(ProtocolError):
    """We broke the protocol (misuse or a local limit); not the peer's fault."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; close that session only."""
