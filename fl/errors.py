"""Errors of the federated-learning package.

Split by whose fault it is, like the wire layer (:mod:`schemas.errors`):

* :class:`FLError` is the root of every error raised by :mod:`fl`.
* :class:`InvalidBundleError` and :class:`InvalidCodecFramesError` are also
  :class:`~schemas.errors.RemoteProtocolError`: weight bundles and latent payloads arrive from
  peers, so a bad one means "close (or ignore) that peer", never "crash the node".
* :class:`CheckpointError` and :class:`EnrollmentError` are local: a corrupt file on our disk,
  or a recording the user named that cannot be used. Their messages name the file.
"""

from __future__ import annotations

from schemas.errors import RemoteProtocolError


class FLError(Exception):
    """Root of every error raised by :mod:`fl`."""


class InvalidBundleError(FLError, RemoteProtocolError):
    """A peer's :class:`~schemas.messages.WeightsBundle` failed validation; the message says why."""


class InvalidCodecFramesError(FLError, RemoteProtocolError):
    """A packed latent payload does not match its declared frame count or bit depth."""


class CheckpointError(FLError):
    """A checkpoint file is missing, truncated, corrupt, or for another architecture."""


class EnrollmentError(FLError):
    """A recording given to :func:`fl.enroll.enroll` cannot be used (message names the file)."""
