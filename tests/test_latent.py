"""Latent quantization and bit packing, against a bit-string oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.config import CodecConfig
from codec.errors import InvalidCodecFramesError
from codec.latent import (
    dequantize,
    pack_codes,
    payload_size,
    quantize,
    step_size,
    unpack_codes,
)
from schemas.errors import RemoteProtocolError


def _oracle_pack(codes: np.ndarray, bits: int) -> bytes:
    """Independent: a string of '0'/'1', MSB first, zero-padded to whole bytes."""
    text = "".join(format(int(code), f"0{bits}b") for code in codes.reshape(-1))
    text += "0" * (-len(text) % 8)
    return bytes(int(text[i : i + 8], 2) for i in range(0, len(text), 8))


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_quantization_error_is_at_most_half_a_step(bits: int) -> None:
    latent = np.random.default_rng(bits).uniform(-1, 1, size=(200, 32))
    codes = quantize(latent, bits)
    assert codes.min() >= 0 and codes.max() <= (1 << bits) - 1
    error = np.abs(dequantize(codes, bits) - latent)
    assert error.max() <= (2.0 / ((1 << bits) - 1)) / 2 + 1e-6
    assert step_size(bits) == pytest.approx(2.0 / ((1 << bits) - 1))
    # The ends of the tanh range are levels, so saturated latents survive exactly.
    ends = np.array([[-1.0, 1.0]])
    assert np.array_equal(dequantize(quantize(ends, bits), bits), ends)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    frames=st.integers(0, 12),
    dim=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_matches_the_bit_string_oracle_and_round_trips(
    bits: int, frames: int, dim: int, seed: int
) -> None:
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=(frames, dim), dtype=np.uint8)
    payload = pack_codes(codes, bits)
    assert payload == _oracle_pack(codes, bits)
    assert len(payload) == payload_size(frames, dim, bits) == -(-frames * dim * bits // 8)
    assert np.array_equal(
        unpack_codes(payload, frame_count=frames, latent_dim=dim, bits=bits), codes
    )


def test_packed_bitrate_is_the_configured_bitrate() -> None:
    config = CodecConfig()  # 32 dims, 5 bits, 25 frames/s
    one_second = np.zeros((int(config.frame_rate_hz), config.latent_dim), dtype=np.uint8)
    assert len(pack_codes(one_second, config.latent_bits)) * 8 == config.kbps * 1000


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=64), frames=st.integers(-2, 20), bits=st.integers(1, 8))
def test_unpack_of_arbitrary_bytes_never_leaks_another_exception(
    payload: bytes, frames: int, bits: int
) -> None:
    try:
        codes = unpack_codes(payload, frame_count=frames, latent_dim=3, bits=bits)
    except InvalidCodecFramesError:
        return
    assert codes.shape == (frames, 3)


def test_unpack_rejects_wrong_length_padding_and_huge_counts() -> None:
    codes = np.ones((3, 5), dtype=np.uint8)
    payload = pack_codes(codes, 3)  # 45 bits -> 6 bytes, 3 padding bits
    with pytest.raises(InvalidCodecFramesError, match="expected 6"):
        unpack_codes(payload + b"\0", frame_count=3, latent_dim=5, bits=3)
    with pytest.raises(InvalidCodecFramesError, match="padding"):
        unpack_codes(payload[:-1] + bytes([payload[-1] | 1]), frame_count=3, latent_dim=5, bits=3)
    with pytest.raises(RemoteProtocolError, match="limit"):
        unpack_codes(b"", frame_count=10**9, latent_dim=32, bits=5)


def test_local_misuse_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bits"):
        quantize(np.zeros((1, 1)), 0)
    with pytest.raises(ValueError, match="codes"):
        pack_codes(np.full((1, 1), 8), 3)
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.array([[np.nan]]), 4)
