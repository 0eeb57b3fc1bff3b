"""Image sampling used by the face crops and the warp, against direct formulas."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from media.dub.geometry import (
    apply_affine,
    box_downsample,
    invert_affine,
    sample_bilinear,
    warp_affine,
)


def _reference(image, x, y):
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, image.shape[1] - 1), min(y0 + 1, image.shape[0] - 1)
    fx, fy = x - x0, y - y0
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 30.99),
    st.floats(0, 20.99),
    st.integers(0, 2**32 - 1),
)
def test_bilinear_matches_the_formula(x, y, seed) -> None:
    image = np.random.default_rng(seed).integers(0, 256, (22, 32, 3), dtype=np.uint8)
    got = sample_bilinear(image, np.array([[x, 5.0]]), np.array([[y, 7.0]]))
    assert np.allclose(got[0, 0], _reference(image.astype(np.float64), x, y), atol=1e-3)
    assert np.allclose(got[0, 1], image[7, 5], atol=1e-3)


def test_identity_warp_returns_the_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert np.allclose(warp_affine(image, identity, (50, 40)), image, atol=1e-3)


def test_affine_inverse_round_trip() -> None:
    matrix = np.array([[0.8, -0.3, 12.0], [0.25, 1.1, -4.0]])
    points = np.array([[0.0, 0.0], [10.0, 5.0], [-3.0, 7.5]])
    back = apply_affine(invert_affine(matrix), apply_affine(matrix, points))
    assert np.allclose(back, points)


def test_box_downsample_is_the_block_mean() -> None:
    image = np.random.default_rng(3).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    expected = image[:30, :45].reshape(10, 3, 15, 3, 3).mean(axis=(1, 3))
    assert np.abs(box_downsample(image, 3).astype(np.float64) - expected).max() < 1.0
