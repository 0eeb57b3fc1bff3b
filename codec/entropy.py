"""Entropy coding of the quantized latents: a per-dimension prior and a range coder.

Theory of operation
-------------------
The fixed-rate wire form (:mod:`codec.latent`) spends ``bits`` on every code. The codes are not
uniform: each latent dimension has its own distribution over the ``2**bits`` levels. A
:class:`LatentPrior` holds that distribution as integer frequencies, one row per latent
dimension, fitted on training material (:func:`fit_prior`) and shipped with the codec (in its
weights bundle: :func:`codec.bundle.bundle_from_state` with ``prior=``,
:func:`codec.bundle.prior_from_bundle`), so sender and receiver model
the codes identically. The ``constriction`` library's range coder (a queue: first in, first out)
then writes each code in about ``-log2 p(code)`` bits.

Payload format (versioned by its first byte, so the fixed-rate form stays decodable):

* ``FORMAT_RANGE_V1`` (``0x01``) then the range coder's 32-bit words, little-endian. The codes
  are coded frame after frame, dimension after dimension; the frame count comes from the
  enclosing :class:`~schemas.messages.CodecFrames`, as for the packed form.
* ``FORMAT_PACKED_V1`` (``0x00``) then the packed form. A range-coded payload ends with a whole
  32-bit word, which for one or two frames of 3-bit codes costs more than the prior saves, so
  :func:`encode_payload` sends whichever of the two is shorter.

Which form a peer sends is agreed outside the payload (the call's codec settings); a packed
payload is decoded by :func:`codec.latent.unpack_codes` exactly as before, and
:func:`decode_payload` picks the decoder from the prior it is given (``None``: packed).

Every problem with bytes from a peer is an :class:`~codec.errors.InvalidCodecFramesError` (or
:class:`~codec.errors.InvalidBundleError` for a prior inside a bundle); a range decoder reading
garbage produces some codes, never a crash, and a payload that leaves words unread or needs more
words than it has is refused. Frequencies are stored as float16 integers up to
:data:`MAX_FREQUENCY` (exact in float16), so the prior costs ``2 * latent_dim * 2**bits`` bytes
before compression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import constriction
import numpy as np
import numpy.typing as npt

from codec.errors import BundleProblem, InvalidBundleError, InvalidCodecFramesError
from codec.latent import MAX_BITS, MAX_CODES_PER_PAYLOAD, MIN_BITS, levels, pack_codes, unpack_codes

FORMAT_PACKED_V1: Final = 0x00
FORMAT_RANGE_V1: Final = 0x01
#: Largest stored frequency: every integer up to 2048 is exact in float16.
MAX_FREQUENCY: Final = 2048
_WORD_BYTES: Final = 4


@dataclass(frozen=True, slots=True, eq=False)
class LatentPrior:
    """Integer frequencies ``(latent_dim, 2**bits)`` in ``[1, MAX_FREQUENCY]``."""

    bits: int
    frequencies: npt.NDArray[np.uint16]

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        table = self.frequencies
        if table.ndim != 2 or table.shape[1] != levels(self.bits) or table.shape[0] < 1:
            raise ValueError(
                f"frequencies must have shape (latent_dim, {levels(self.bits)}), got {table.shape}"
            )
        if table.min() < 1 or table.max() > MAX_FREQUENCY:
            raise ValueError(f"frequencies must be in [1, {MAX_FREQUENCY}]")

    @property
    def latent_dim(self) -> int:
        return int(self.frequencies.shape[0])

    def probabilities(self) -> npt.NDArray[np.float64]:
        table = self.frequencies.astype(np.float64)
        result: npt.NDArray[np.float64] = table / table.sum(axis=1, keepdims=True)
        return result

    def ideal_bits(self, codes: npt.NDArray[np.integer]) -> float:
        """Information content of ``codes`` under the prior (what a perfect coder would spend)."""
        array = _checked_codes(codes, self)
        probabilities = self.probabilities()
        columns = np.arange(self.latent_dim)
        return float(-np.log2(probabilities[columns[None, :], array]).sum())


def fit_prior(
    codes: Sequence[npt.NDArray[np.integer]], *, bits: int, latent_dim: int
) -> LatentPrior:
    """Frequencies of each level per dimension in ``codes`` (each ``(frames, latent_dim)``),
    add-half smoothed and scaled so the most frequent level of a row is ``MAX_FREQUENCY``."""
    counts = np.full((latent_dim, levels(bits)), 0.5, dtype=np.float64)
    for item in codes:
        array = np.asarray(item)
        if array.ndim != 2 or array.shape[1] != latent_dim:
            raise ValueError(f"codes must have shape (frames, {latent_dim}), got {array.shape}")
        if array.size and (array.min() < 0 or array.max() >= levels(bits)):
            raise ValueError(f"codes must be in [0, {levels(bits) - 1}]")
        for dimension in range(latent_dim):
            counts[dimension] += np.bincount(array[:, dimension], minlength=levels(bits))
    scaled = counts / counts.max(axis=1, keepdims=True) * MAX_FREQUENCY
    frequencies = np.clip(np.rint(scaled), 1, MAX_FREQUENCY).astype(np.uint16)
    return LatentPrior(bits=bits, frequencies=frequencies)


def _checked_codes(codes: npt.NDArray[np.integer], prior: LatentPrior) -> npt.NDArray[np.int32]:
    array = np.asarray(codes)
    if array.ndim != 2 or array.shape[1] != prior.latent_dim:
        raise ValueError(f"codes must have shape (frames, {prior.latent_dim}), got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= levels(prior.bits)):
        raise ValueError(f"codes must be in [0, {levels(prior.bits) - 1}] for {prior.bits} bits")
    return array.astype(np.int32)


def _row_probabilities(prior: LatentPrior, frame_count: int) -> npt.NDArray[np.float64]:
    # One probability row per coded symbol, frame after frame: the prior repeated.
    return np.tile(prior.probabilities(), (frame_count, 1))


_MODEL_FAMILY: Final = constriction.stream.model.Categorical(perfect=False)


def encode_codes(codes: npt.NDArray[np.integer], prior: LatentPrior) -> bytes:
    """Codes ``(frames, latent_dim)`` → a ``FORMAT_RANGE_V1`` payload."""
    array = _checked_codes(codes, prior)
    encoder = constriction.stream.queue.RangeEncoder()
    if array.size:
        encoder.encode(array.reshape(-1), _MODEL_FAMILY, _row_probabilities(prior, len(array)))
    words = np.asarray(encoder.get_compressed(), dtype="<u4")
    return bytes([FORMAT_RANGE_V1]) + words.tobytes()


def decode_codes(payload: bytes, *, frame_count: int, prior: LatentPrior) -> npt.NDArray[np.uint8]:
    """A peer's ``FORMAT_RANGE_V1`` or ``FORMAT_PACKED_V1`` payload → codes
    ``(frame_count, latent_dim)``.

    Raises :class:`InvalidCodecFramesError` for an unknown format, a length that is not whole
    words, a frame count over the limit, or words left unread after the last code.
    """
    if frame_count < 0:
        raise InvalidCodecFramesError(f"invalid frame_count {frame_count}")
    code_count = frame_count * prior.latent_dim
    if code_count > MAX_CODES_PER_PAYLOAD:
        raise InvalidCodecFramesError(
            f"{frame_count} frames exceed the limit of {MAX_CODES_PER_PAYLOAD} codes per payload"
        )
    if not payload:
        raise InvalidCodecFramesError("entropy-coded payload is empty")
    if payload[0] == FORMAT_PACKED_V1:
        return unpack_codes(
            payload[1:], frame_count=frame_count, latent_dim=prior.latent_dim, bits=prior.bits
        )
    if payload[0] != FORMAT_RANGE_V1:
        raise InvalidCodecFramesError(f"unknown codec payload format {payload[0]:#04x}")
    body = payload[1:]
    if len(body) % _WORD_BYTES:
        raise InvalidCodecFramesError(f"range-coded body of {len(body)} bytes is not whole words")
    # A code costs at least -log2(max p) bits; a body far longer than every code at the
    # smallest probability could need is not ours (it bounds the decoder's work too).
    most_bits = code_count * math.ceil(math.log2(prior.frequencies.sum(axis=1).max())) + 64
    if len(body) * 8 > most_bits + 8 * _WORD_BYTES:
        raise InvalidCodecFramesError(f"range-coded body of {len(body)} bytes is too long")
    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    if code_count == 0:
        if words.size:
            raise InvalidCodecFramesError("payload of zero frames carries data")
        return np.zeros((0, prior.latent_dim), dtype=np.uint8)
    decoder = constriction.stream.queue.RangeDecoder(words)
    try:
        symbols = decoder.decode(_MODEL_FAMILY, _row_probabilities(prior, frame_count))
    except (ValueError, RuntimeError, AssertionError) as error:
        raise InvalidCodecFramesError(f"range-coded payload does not decode: {error}") from error
    if not decoder.maybe_exhausted():
        raise InvalidCodecFramesError("range-coded payload has words left after the last code")
    array = np.asarray(symbols)
    if array.size != code_count or array.min() < 0 or array.max() >= levels(prior.bits):
        raise InvalidCodecFramesError("range-coded payload decodes to codes out of range")
    return array.astype(np.uint8).reshape(frame_count, prior.latent_dim)


def encode_payload(
    codes: npt.NDArray[np.integer], *, bits: int, prior: LatentPrior | None
) -> bytes:
    """The wire payload: packed (:func:`codec.latent.pack_codes`) without a prior; with one, the
    shorter of the range-coded and the tagged packed form (module docstring)."""
    if prior is None:
        return pack_codes(codes, bits)
    if prior.bits != bits:
        raise ValueError(f"the prior is for {prior.bits} bits, not {bits}")
    coded = encode_codes(codes, prior)
    packed = bytes([FORMAT_PACKED_V1]) + pack_codes(codes, bits)
    return coded if len(coded) <= len(packed) else packed


def decode_payload(
    payload: bytes, *, frame_count: int, latent_dim: int, bits: int, prior: LatentPrior | None
) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`encode_payload` for bytes from a peer (typed errors only)."""
    if prior is None:
        return unpack_codes(payload, frame_count=frame_count, latent_dim=latent_dim, bits=bits)
    if prior.bits != bits or prior.latent_dim != latent_dim:
        raise InvalidCodecFramesError(
            f"the prior is for {prior.latent_dim}x{prior.bits} bits, frames are {latent_dim}x{bits}"
        )
    return decode_codes(payload, frame_count=frame_count, prior=prior)


def prior_from_values(values: npt.NDArray[np.floating], *, latent_dim: int) -> LatentPrior:
    """A prior from a bundle tensor's decoded values; :class:`InvalidBundleError` if unusable."""
    if values.ndim != 2 or values.shape[0] != latent_dim:
        raise InvalidBundleError(
            BundleProblem.ENTROPY_PRIOR,
            f"entropy prior has shape {values.shape}, expected ({latent_dim}, 2**bits)",
        )
    width = int(values.shape[1])
    bits = width.bit_length() - 1
    if width != 1 << bits or not MIN_BITS <= bits <= MAX_BITS:
        raise InvalidBundleError(
            BundleProblem.ENTROPY_PRIOR,
            f"entropy prior has {width} levels, not a power of two up to 256",
        )
    if not np.isfinite(values).all() or (values != np.rint(values)).any():
        raise InvalidBundleError(
            BundleProblem.ENTROPY_PRIOR, "entropy prior frequencies must be whole numbers"
        )
    if values.min() < 1 or values.max() > MAX_FREQUENCY:
        raise InvalidBundleError(
            BundleProblem.ENTROPY_PRIOR,
            f"entropy prior frequencies must be in [1, {MAX_FREQUENCY}]",
        )
    return LatentPrior(bits=bits, frequencies=values.astype(np.uint16))
