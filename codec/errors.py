"""Errors of the personal speech codec (:mod:`codec`).

Split by whose fault it is, like the wire layer (:mod:`schemas.errors`):

* :class:`CodecError` is the root of every error raised by :mod:`codec`.
* :class:`InvalidBundleError` and :class:`InvalidCodecFramesError` are also
  :class:`~schemas.errors.RemoteProtocolError`: weight bundles and latent payloads arrive from
  peers, so a bad one means "close (or ignore) that peer", never "crash the node".
* :class:`CheckpointError` is local: a corrupt file on our disk. Its message names the file.
"""

from __future__ import annotations

import enum

from common.errors import ParleyError
from schemas.errors import RemoteProtocolError


class CodecError(ParleyError):
    """Root of every error raised by :mod:`codec`."""


class BundleProblem(enum.StrEnum):
    """What was wrong with a peer's bundle: the code the node counts it under, never the
    message (which quotes peer data, such as tensor names)."""

    ARCHITECTURE = "architecture"
    NON_FINITE = "non_finite"
    CONTENT_HASH = "content_hash"
    SHAPE = "shape"
    TENSOR_NAMES = "tensor_names"
    DTYPE = "dtype"
    QUANTIZATION = "quantization"
    COMPRESSION = "compression"
    CORRUPT_DATA = "corrupt_data"
    SIZE = "size"
    UNENCODABLE = "unencodable"


class InvalidBundleError(CodecError, RemoteProtocolError):
    """A peer's :class:`~schemas.messages.WeightsBundle` failed validation: ``problem`` says
    what, the message says why (one line)."""

    def __init__(self, problem: BundleProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class InvalidCodecFramesError(CodecError, RemoteProtocolError):
    """A packed latent payload does not match its declared frame count or bit depth."""


class CheckpointError(CodecError):
    """A checkpoint file is missing, truncated, corrupt, or for another architecture."""
