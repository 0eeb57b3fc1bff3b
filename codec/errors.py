"""Errors of the personal speech codec (:mod:`codec`).

Split by whose fault it is, like the wire layer (:mod:`schemas.errors`):

* :class:`CodecError` is the root of every error raised by :mod:`codec`.
* :class:`InvalidBundleError` and :class:`InvalidCodecFramesError` are also
  :class:`~schemas.errors.RemoteProtocolError`: weight bundles and latent payloads arrive from
  peers, so a bad one means "close (or ignore) that peer", never "crash the node".
* :class:`CheckpointError` is local: a corrupt file on our disk. Its message names the file.
"""

from __future__ import annotations

from schemas.errors import RemoteProtocolError


class CodecError(Exception):
    """Root of every error raised by :mod:`codec`."""


class InvalidBundleError(CodecError, RemoteProtocolError):
    """A peer's :class:`~schemas.messages.WeightsBundle` failed validation; the message says why."""


class InvalidCodecFramesError(CodecError, RemoteProtocolError):
    """A packed latent payload does not match its declared frame count or bit depth."""


class CheckpointError(CodecError):
    """A checkpoint file is missing, truncated, corrupt, or for another architecture."""
