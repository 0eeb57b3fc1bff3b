"""Entropy-coded latents: round trips, size against the information content, the prior inside a
bundle, and refusal of every bad payload with a typed error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.bundle import (
    PRIOR_TENSOR_NAME,
    bundle_from_state,
    compute_content_hash,
    prior_from_bundle,
    state_from_bundle,
)
from codec.checkpoint import load_checkpoint
from codec.config import CodecConfig
from codec.entropy import (
    FORMAT_PACKED_V1,
    FORMAT_RANGE_V1,
    MAX_FREQUENCY,
    LatentPrior,
    decode_codes,
    decode_payload,
    encode_codes,
    encode_payload,
    fit_prior,
)
from codec.errors import InvalidBundleError, InvalidCodecFramesError
from codec.latent import MAX_CODES_PER_PAYLOAD, pack_codes, payload_size
from codec.model import expected_shapes
from codec.pretrained import DEFAULT_CHECKPOINT
from schemas import codec as wire
from schemas.messages import TensorDtype, WeightsBundle


def _skewed_codes(bits: int, frames: int, dim: int, seed: int) -> np.ndarray:
    """Codes bunched around the middle level, like a trained latent's."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    values = np.rint(rng.normal(top / 2, max(0.5, top / 8), size=(frames, dim)))
    return np.clip(values, 0, top).astype(np.uint8)


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_round_trip_and_size_close_to_the_information_content(bits: int) -> None:
    training = _skewed_codes(bits, 400, 32, seed=bits)
    prior = fit_prior([training], bits=bits, latent_dim=32)
    codes = _skewed_codes(bits, 7, 32, seed=100 + bits)
    payload = encode_codes(codes, prior)
    assert payload[0] == FORMAT_RANGE_V1
    assert np.array_equal(decode_codes(payload, frame_count=7, prior=prior), codes)
    # A range coder spends the information content plus at most its final words.
    ideal = prior.ideal_bits(codes)
    assert ideal <= 8 * (len(payload) - 1) <= ideal + 64 + 32


def test_entropy_coding_beats_packing_on_skewed_codes() -> None:
    prior = fit_prior([_skewed_codes(5, 2000, 32, seed=1)], bits=5, latent_dim=32)
    codes = _skewed_codes(5, 50, 32, seed=2)
    # About 4 bits of information per 5-bit code (a normal of sd 3.9 levels).
    assert len(encode_codes(codes, prior)) < 0.85 * payload_size(50, 32, 5)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    frames=st.integers(0, 6),
    dim=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_codes_round_trip_under_any_fitted_prior(
    bits: int, frames: int, dim: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    # The prior is fitted on other codes: levels it never saw must still code.
    prior = fit_prior([rng.integers(0, 2, size=(5, dim))], bits=bits, latent_dim=dim)
    codes = rng.integers(0, 1 << bits, size=(frames, dim)).astype(np.uint8)
    payload = encode_payload(codes, bits=bits, prior=prior)
    decoded = decode_payload(payload, frame_count=frames, latent_dim=dim, bits=bits, prior=prior)
    assert np.array_equal(decoded, codes)


def test_the_sender_never_sends_more_than_the_tagged_packed_form() -> None:
    # Uniform 3-bit codes: the prior saves nothing and the coder's last word costs, so the
    # payload falls back to the packed form behind its format byte, and still decodes.
    rng = np.random.default_rng(6)
    prior = fit_prior([rng.integers(0, 8, size=(4000, 32))], bits=3, latent_dim=32)
    codes = rng.integers(0, 8, size=(2, 32)).astype(np.uint8)
    payload = encode_payload(codes, bits=3, prior=prior)
    assert len(payload) <= 1 + payload_size(2, 32, 3)
    assert len(payload) <= len(encode_codes(codes, prior))
    assert payload[0] == FORMAT_PACKED_V1
    assert np.array_equal(decode_codes(payload, frame_count=2, prior=prior), codes)
    with pytest.raises(InvalidCodecFramesError):
        decode_codes(payload[:-1], frame_count=2, prior=prior)


def test_without_a_prior_the_payload_is_the_packed_form_as_before() -> None:
    codes = _skewed_codes(4, 3, 32, seed=5)
    payload = encode_payload(codes, bits=4, prior=None)
    assert payload == pack_codes(codes, 4)
    decoded = decode_payload(payload, frame_count=3, latent_dim=32, bits=4, prior=None)
    assert np.array_equal(decoded, codes)


@pytest.fixture(scope="module")
def prior() -> LatentPrior:
    return fit_prior([_skewed_codes(5, 500, 32, seed=9)], bits=5, latent_dim=32)


def test_bad_payloads_are_typed_errors(prior: LatentPrior) -> None:
    good = encode_codes(_skewed_codes(5, 3, 32, seed=3), prior)
    bad = {
        "empty": b"",
        "unknown format": bytes([0x02]) + good[1:],
        "packed form": pack_codes(_skewed_codes(5, 3, 32, seed=3), 5),
        "half a word": good[:-2],
        "extra words": good + bytes(8),
        "far too long": bytes([FORMAT_RANGE_V1]) + bytes(4 * 10_000),
    }
    for what, payload in bad.items():
        with pytest.raises(InvalidCodecFramesError):
            decode_codes(payload, frame_count=3, prior=prior)
            pytest.fail(f"{what} was accepted")
    with pytest.raises(InvalidCodecFramesError, match="limit"):
        decode_codes(good, frame_count=MAX_CODES_PER_PAYLOAD, prior=prior)
    with pytest.raises(InvalidCodecFramesError):
        decode_codes(good, frame_count=-1, prior=prior)
    with pytest.raises(InvalidCodecFramesError, match="prior"):
        decode_payload(good, frame_count=3, latent_dim=16, bits=5, prior=prior)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64), frames=st.integers(0, 4))
def test_garbage_never_crashes_the_decoder(body: bytes, frames: int) -> None:
    prior = fit_prior([_skewed_codes(3, 50, 8, seed=4)], bits=3, latent_dim=8)
    try:
        codes = decode_codes(bytes([FORMAT_RANGE_V1]) + body, frame_count=frames, prior=prior)
    except InvalidCodecFramesError:
        return
    assert codes.shape == (frames, 8)
    assert codes.max(initial=0) <= 7


def test_prior_validates_its_table() -> None:
    with pytest.raises(ValueError, match="shape"):
        LatentPrior(bits=3, frequencies=np.ones((4, 7), dtype=np.uint16))
    with pytest.raises(ValueError, match="frequencies"):
        LatentPrior(bits=1, frequencies=np.zeros((4, 2), dtype=np.uint16))
    fitted = fit_prior([np.zeros((10, 2), dtype=np.uint8)], bits=2, latent_dim=2)
    assert fitted.frequencies.max() == MAX_FREQUENCY and fitted.frequencies.min() >= 1


# --------------------------------------------------------------------------------------------
# The prior inside a weights bundle


def _shipped() -> tuple[CodecConfig, dict[str, np.ndarray]]:
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    return checkpoint.codec_config, dict(checkpoint.state)


def test_shipped_codec_with_a_5_bit_prior_fits_50_kb_and_round_trips(prior: LatentPrior) -> None:
    config, state = _shipped()
    bundle = bundle_from_state(
        state, architecture_id=config.architecture_id, round=1, sample_count=10, prior=prior
    )
    received = wire.decode(wire.encode(bundle))
    assert isinstance(received, WeightsBundle)
    assert len(wire.encode(bundle)) <= 50_000
    shapes = expected_shapes(config)
    loaded = state_from_bundle(
        received, expected_architecture_id=config.architecture_id, expected_shapes=shapes
    )
    assert set(loaded) == set(shapes)
    carried = prior_from_bundle(received, latent_dim=config.latent_dim)
    assert carried is not None and np.array_equal(carried.frequencies, prior.frequencies)
    plain = bundle_from_state(
        state, architecture_id=config.architecture_id, round=1, sample_count=1
    )
    assert prior_from_bundle(plain, latent_dim=config.latent_dim) is None


def _with_prior_blob(bundle: WeightsBundle, **changes: object) -> WeightsBundle:
    tensors = tuple(
        dataclasses.replace(blob, **changes)  # type: ignore[arg-type]
        if blob.name == PRIOR_TENSOR_NAME
        else blob
        for blob in bundle.tensors
    )
    changed = dataclasses.replace(bundle, tensors=tensors)
    return dataclasses.replace(changed, content_hash=compute_content_hash(changed))


def test_bad_priors_in_a_bundle_are_refused(prior: LatentPrior) -> None:
    config, state = _shipped()
    arch = config.architecture_id
    bundle = bundle_from_state(
        state, architecture_id=arch, round=1, sample_count=1, prior=prior, compression="none"
    )
    fractional = prior.frequencies.astype("<f2").copy()
    fractional[0, 0] = 1.5
    too_big = prior.frequencies.astype("<f2").copy()
    too_big[0, 0] = 4000.0
    bad = [
        _with_prior_blob(bundle, dtype=TensorDtype.INT8, scale=1.0),
        _with_prior_blob(bundle, shape=(16, 64)),
        _with_prior_blob(bundle, shape=(32, 24), data=bytes(32 * 24 * 2)),
        _with_prior_blob(bundle, data=fractional.tobytes()),
        _with_prior_blob(bundle, data=too_big.tobytes()),
        _with_prior_blob(bundle, data=bytes(3)),
    ]
    for item in bad:
        with pytest.raises(InvalidBundleError):
            prior_from_bundle(item, latent_dim=config.latent_dim)
    doubled = dataclasses.replace(bundle, tensors=(*bundle.tensors, bundle.tensors[0]))
    shapes = expected_shapes(config)
    twice = [blob for blob in bundle.tensors if blob.name == PRIOR_TENSOR_NAME] * 2
    doubled = dataclasses.replace(
        bundle, tensors=(*[b for b in bundle.tensors if b.name != PRIOR_TENSOR_NAME], *twice)
    )
    doubled = dataclasses.replace(doubled, content_hash=compute_content_hash(doubled))
    with pytest.raises(InvalidBundleError, match="unique"):
        state_from_bundle(doubled, expected_architecture_id=arch, expected_shapes=shapes)
    with pytest.raises(ValueError, match="reserved"):
        bundle_from_state(
            {**state, PRIOR_TENSOR_NAME: np.ones((2, 2), dtype=np.float32)},
            architecture_id=arch,
            round=1,
            sample_count=1,
        )
