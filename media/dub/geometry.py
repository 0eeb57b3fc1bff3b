"""Image sampling and 2-D affine helpers shared by the face models and the mouth warp.

Affine maps are 2x3 float64 matrices acting on column vectors ``(x, y, 1)``; pixel centres sit
at integer coordinates. Sampling is bilinear with edge clamping, in numpy only.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

__all__ = [
    "Affine",
    "apply_affine",
    "box_downsample",
    "invert_affine",
    "sample_bilinear",
    "warp_affine",
]

Affine = npt.NDArray[np.float64]
Image = npt.NDArray[np.uint8]
FloatImage = npt.NDArray[np.float32]


def invert_affine(matrix: Affine) -> Affine:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(matrix: Affine, points: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """``points`` (N, 2) mapped by ``matrix``."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def sample_bilinear(
    image: npt.NDArray[np.generic], xs: npt.NDArray[np.floating], ys: npt.NDArray[np.floating]
) -> FloatImage:
    """``image`` (H, W, C) read at float coordinates (any shape), clamped to its edges."""
    height, width, channels = image.shape
    if height < 2 or width < 2:
        raise ValueError(f"cannot sample a {width}x{height} image")
    # Work on the bounding box of the coordinates only: a small contiguous copy is gathered
    # from much faster than a whole 720p frame (cache misses dominate otherwise).
    x = np.clip(np.asarray(xs, dtype=np.float32), 0.0, float(width - 1))
    y = np.clip(np.asarray(ys, dtype=np.float32), 0.0, float(height - 1))
    left = min(int(x.min()), width - 2)
    top_row = min(int(y.min()), height - 2)
    right = max(int(x.max()) + 2, left + 2)
    bottom_row = max(int(y.max()) + 2, top_row + 2)
    window = np.ascontiguousarray(image[top_row:bottom_row, left:right])
    win_h, win_w = window.shape[:2]
    x -= left
    y -= top_row
    x0 = np.minimum(x.astype(np.int32), win_w - 2)
    y0 = np.minimum(y.astype(np.int32), win_h - 2)
    fx = x - x0
    fy = y - y0
    # Channel-planar: every operation below runs over long rows, not over triples.
    planes = window.transpose(2, 0, 1).reshape(channels, -1)
    index = (y0 * win_w + x0).reshape(-1)
    fx = fx.reshape(-1)
    fy = fy.reshape(-1)
    # Gather first, convert after: converting the whole source would cost more than the rest.
    p00 = np.take(planes, index, axis=1).astype(np.float32)
    p01 = np.take(planes, index + 1, axis=1).astype(np.float32)
    p10 = np.take(planes, index + win_w, axis=1).astype(np.float32)
    p11 = np.take(planes, index + win_w + 1, axis=1).astype(np.float32)
    upper = p00 + (p01 - p00) * fx
    lower = p10 + (p11 - p10) * fx
    planar = upper + (lower - upper) * fy
    result: FloatImage = np.ascontiguousarray(planar.T).reshape(*np.shape(xs), channels)
    return result


def warp_affine(
    image: npt.NDArray[np.generic], to_source: Affine, size: tuple[int, int]
) -> FloatImage:
    """An output of ``size`` (width, height) whose pixel (x, y) reads ``image`` at
    ``to_source @ (x, y, 1)``."""
    xs, ys = _grid(size)
    # Python floats keep the arithmetic in float32 (numpy 2 promotion rules).
    a, b, c = (float(v) for v in to_source[0])
    d, e, f = (float(v) for v in to_source[1])
    return sample_bilinear(image, xs * a + ys * b + c, xs * d + ys * e + f)


@functools.lru_cache(maxsize=16)
def _grid(size: tuple[int, int]) -> tuple[FloatImage, FloatImage]:
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def box_downsample(image: Image, factor: int) -> Image:
    """Average ``factor`` x ``factor`` blocks (anti-aliasing before a small model input)."""
    if factor <= 1:
        return image
    height = image.shape[0] // factor * factor
    width = image.shape[1] // factor * factor
    # Strided sums beat a reshape-mean by a wide margin on a 720p frame.
    total = np.zeros((height // factor, width // factor, image.shape[2]), dtype=np.uint16)
    for dy in range(factor):
        for dx in range(factor):
            total += image[dy:height:factor, dx:width:factor]
    result: Image = (total // (factor * factor)).astype(np.uint8)
    return result
