"""Wire form of the codec's latents: uniform scalar quantization and bit packing.

The encoder's latent is ``tanh``-bounded, so ``bits`` bits give ``2**bits`` levels spread evenly
over ``[-1, 1]`` (both ends included: a silent frame saturates to exactly ±1 and survives the
round trip). Codes are packed most-significant bit first, frame after frame, with no padding
between frames: ``frames * latent_dim * bits`` bits, zero-padded to a whole byte. The bitrate is
therefore exact: ``latent_dim * bits * frame_rate_hz`` bits per second.

Unpacking is the one entry point for bytes from a peer, so it checks the payload length and the
padding bits and raises :class:`~fl.errors.InvalidCodecFramesError` (a remote-protocol error).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from codec.errors import InvalidCodecFramesError

MIN_BITS = 1
MAX_BITS = 8
#: A peer may not make us allocate more than this many codes for one payload.
MAX_CODES_PER_PAYLOAD = 1 << 20


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")


def levels(bits: int) -> int:
    _check_bits(bits)
    return 1 << bits


def quantize(latent: npt.NDArray[np.floating], bits: int) -> npt.NDArray[np.uint8]:
    """Latent values in ``[-1, 1]`` (clipped if outside) → codes in ``[0, 2**bits - 1]``."""
    top = levels(bits) - 1
    values = np.asarray(latent, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("latent contains non-finite values")
    codes = np.rint((np.clip(values, -1.0, 1.0) + 1.0) * (top / 2.0))
    return codes.astype(np.uint8)


def dequantize(codes: npt.NDArray[np.integer], bits: int) -> npt.NDArray[np.float32]:
    """Inverse of :func:`quantize`: the centre value of each code's cell."""
    top = levels(bits) - 1
    array = np.asarray(codes)
    if array.size and (array.min() < 0 or array.max() > top):
        raise ValueError(f"codes must be in [0, {top}] for {bits} bits")
    return (array.astype(np.float32) * np.float32(2.0 / top) - np.float32(1.0)).astype(np.float32)


def step_size(bits: int) -> float:
    """Distance between adjacent levels; quantization error is at most half of it."""
    return 2.0 / (levels(bits) - 1)


def payload_size(frame_count: int, latent_dim: int, bits: int) -> int:
    """Bytes of a packed payload of ``frame_count`` frames."""
    _check_bits(bits)
    return (frame_count * latent_dim * bits + 7) // 8


def pack_codes(codes: npt.NDArray[np.integer], bits: int) -> bytes:
    """Codes ``(frames, latent_dim)`` → bytes, ``bits`` per code, MSB first."""
    top = levels(bits) - 1
    array = np.asarray(codes)
    if array.ndim != 2:
        raise ValueError(f"codes must have shape (frames, latent_dim), got {array.shape}")
    if array.size and (array.min() < 0 or array.max() > top):
        raise ValueError(f"codes must be in [0, {top}] for {bits} bits")
    as_bytes = array.astype(np.uint8).reshape(-1, 1)
    # unpackbits yields 8 bits per code, MSB first; keep the low ``bits`` of them.
    code_bits = np.unpackbits(as_bytes, axis=1)[:, 8 - bits :]
    return np.packbits(code_bits.reshape(-1)).tobytes()


def unpack_codes(
    payload: bytes, *, frame_count: int, latent_dim: int, bits: int
) -> npt.NDArray[np.uint8]:
    """Bytes from a peer → codes ``(frame_count, latent_dim)``.

    Raises :class:`InvalidCodecFramesError` if the payload is not exactly the size implied by
    the declared frame count, or if its padding bits are not zero.
    """
    _check_bits(bits)
    if frame_count < 0 or latent_dim <= 0:
        raise InvalidCodecFramesError(
            f"invalid frame_count {frame_count} / latent_dim {latent_dim}"
        )
    code_count = frame_count * latent_dim
    if code_count > MAX_CODES_PER_PAYLOAD:
        raise InvalidCodecFramesError(
            f"{frame_count} frames exceed the limit of {MAX_CODES_PER_PAYLOAD} codes per payload"
        )
    expected = payload_size(frame_count, latent_dim, bits)
    if len(payload) != expected:
        raise InvalidCodecFramesError(
            f"payload is {len(payload)} bytes, expected {expected} for {frame_count} frames "
            f"of {latent_dim}x{bits} bits"
        )
    all_bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    used = code_count * bits
    if all_bits[used:].any():
        raise InvalidCodecFramesError("payload padding bits are not zero")
    code_bits = all_bits[:used].reshape(code_count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint16)
    codes = (code_bits.astype(np.uint16) @ weights).astype(np.uint8)
    return codes.reshape(frame_count, latent_dim)
