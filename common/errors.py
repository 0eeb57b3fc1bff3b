"""The root of parley's expected failures.

Every package keeps one error root of its own (``codec.errors.CodecError``,
``fl.errors.FLError``, ``media.errors.MediaError``, ``daemon.errors.DaemonError``); each of
those is a :class:`ParleyError`, so the command line shows any of them as the one line its
message is, and anything else (a bug) as a traceback. Wire-protocol errors keep their own root
(``schemas.errors.ProtocolError``): they close a session, they never reach a user as such.
"""

from __future__ import annotations


class ParleyError(Exception):
    """Root of every failure parley raises on purpose for bad input or a bad environment."""


__all__ = ["ParleyError"]
