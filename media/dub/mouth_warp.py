"""Move the lips to a mouth shape: piecewise-affine warp, inner mouth filled, seamless edge.

Theory of operation
-------------------
Everything happens in a *mouth frame*: origin midway between the mouth corners, x along the
eye line (steadier than the corners, which move as the mouth does), y down, lengths in pixels.

1. **Target contours.** From the current lip landmarks (outer and inner loops, 20 points each)
   the target loops are built: widths scaled by the shape's ``width`` (and narrowed further
   by ``rounding``); the change of inner-lip gap ``(target - current) * interocular`` shared
   between the upper lip (30 %, it moves little) and the lower lip with the jaw (70 %), weighted
   across the mouth by a profile that is 1 at the middle and 0 at the corners (rounder when the
   lips round), so the corners stay put.
2. **Mesh.** Two rings of points around the lips, shaped as half-ellipses (short above, where
   the nose is; long below, towards the chin): the inner ring follows 40 % of the lips' motion,
   the outer ring is fixed. Strips of triangles join inner lip loop -> outer lip loop -> inner
   ring -> outer ring, plus a fan inside the inner lip loop. The fixed outer ring makes the
   warp the identity on the region's boundary, so no seam can appear there.
3. **Warp.** Each target triangle is rasterised in its bounding box; its pixels read the
   source frame through the triangle's affine map (bilinear). Pixels outside every triangle
   keep their value exactly.
4. **Inner mouth.** Where the target lips part wider than the source's, the gap is filled with a
   shaded mouth cavity and a band of upper teeth (and a thinner band of lower teeth), with a
   one-pixel soft edge against the lips.

Classical geometry only: no learned weights are involved in the warp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from media.dub.face_mesh import (
    INNER_LIPS,
    LEFT_EYE_OUTER,
    OUTER_LIPS,
    RIGHT_EYE_OUTER,
    FaceLandmarks,
)
from media.dub.geometry import sample_bilinear
from media.dub.visemes import MouthShape

__all__ = ["MouthRegion", "warp_mouth"]

_LOOP: Final = len(OUTER_LIPS)
#: Positions (in a loop) of the corners and the lower lip: 0 is the right corner, 1..9 the
#: lower lip, 10 the left corner, 11..19 the upper lip.
_LOWER: Final = np.arange(1, 10)
_UPPER: Final = np.arange(11, 20)
_UPPER_SHARE: Final = 0.3
_RING_FOLLOW: Final = 0.4
_CAVITY: Final = np.array([86.0, 40.0, 40.0])
_CAVITY_DEEP: Final = np.array([30.0, 10.0, 12.0])
_TEETH: Final = np.array([212.0, 202.0, 186.0])


@dataclass(frozen=True, slots=True, eq=False)
class MouthRegion:
    """The frame box the warp may have changed (x0, y0 inclusive; x1, y1 exclusive) and, inside
    it, which pixels it wrote (``changed``, shape (y1 - y0, x1 - x0))."""

    x0: int
    y0: int
    x1: int
    y1: int
    changed: npt.NDArray[np.bool_]

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1


@dataclass(frozen=True, slots=True)
class _MouthFrame:
    origin: npt.NDArray[np.float64]
    axes: npt.NDArray[np.float64]  # rows: x axis, y axis (unit vectors in frame pixels)
    interocular: float

    def to_local(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return (points - self.origin) @ self.axes.T

    def to_frame(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return points @ self.axes + self.origin


def _mouth_frame(points: npt.NDArray[np.float64]) -> _MouthFrame:
    eye_axis = points[LEFT_EYE_OUTER, :2] - points[RIGHT_EYE_OUTER, :2]
    interocular = float(np.linalg.norm(eye_axis))
    x_axis = eye_axis / max(interocular, 1e-9)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    origin = (points[OUTER_LIPS[0], :2] + points[OUTER_LIPS[10], :2]) / 2
    return _MouthFrame(origin, np.stack([x_axis, y_axis]), interocular)


def _profile(
    x: npt.NDArray[np.float64], half_width: float, rounding: float
) -> npt.NDArray[np.float64]:
    """1 at the middle of the mouth, 0 at the corners; flatter (rounder opening) when rounded."""
    inside = np.clip(1.0 - (x / max(half_width, 1e-6)) ** 2, 0.0, 1.0)
    result: npt.NDArray[np.float64] = inside ** (0.5 - 0.25 * rounding)
    return result


def _target_loops(
    outer: npt.NDArray[np.float64],
    inner: npt.NDArray[np.float64],
    shape: MouthShape,
    interocular: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    half_width = (outer[10, 0] - outer[0, 0]) / 2
    current_gap = float(inner[_LOWER, 1].max() - inner[_UPPER, 1].min())
    current_gap = max(current_gap, 0.0)
    # The middle points (5 and 15) carry the gap the viseme means.
    current_gap = max(float(inner[5, 1] - inner[15, 1]), 0.0)
    change = shape.opening * interocular - current_gap
    width = shape.width
    new_outer = outer.copy()
    new_inner = inner.copy()
    for loop, narrowing in ((new_outer, 0.0), (new_inner, 0.12)):
        loop[:, 0] *= width * (1.0 - narrowing * shape.rounding)
        weight = _profile(loop[:, 0], half_width * width, shape.rounding)
        loop[_UPPER, 1] -= _UPPER_SHARE * change * weight[_UPPER]
        loop[_LOWER, 1] += (1.0 - _UPPER_SHARE) * change * weight[_LOWER]
    # Pressed lips (before a /p/) look thinner: pull the outer contour towards the inner one.
    squeeze = 0.15 * shape.closure
    new_outer[_UPPER] += (new_inner[_UPPER] - new_outer[_UPPER]) * squeeze
    new_outer[_LOWER] += (new_inner[_LOWER] - new_outer[_LOWER]) * squeeze
    # The inner lips may touch but never cross.
    middle = (new_inner[_UPPER[::-1], 1] + new_inner[_LOWER, 1]) / 2
    new_inner[_UPPER[::-1], 1] = np.minimum(new_inner[_UPPER[::-1], 1], middle)
    new_inner[_LOWER, 1] = np.maximum(new_inner[_LOWER, 1], middle)
    return new_outer, new_inner


def _rings(
    outer: npt.NDArray[np.float64], interocular: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    half_width = (outer[10, 0] - outer[0, 0]) / 2
    top = -outer[:, 1].min()
    bottom = outer[:, 1].max()
    angles = np.arctan2(outer[:, 1], outer[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rings = []
    for widen, above, below in ((1.3, 0.10, 0.14), (1.7, 0.17, 0.38)):
        reach_y = np.where(sin < 0, top + above * interocular, bottom + below * interocular)
        rings.append(np.stack([half_width * widen * cos, reach_y * sin], axis=1))
    return rings[0], rings[1]


def _strip(first: range, second: range) -> list[tuple[int, int, int]]:
    a, b = list(first), list(second)
    triangles = []
    for i in range(len(a)):
        j = (i + 1) % len(a)
        triangles.append((a[i], a[j], b[i]))
        triangles.append((b[i], a[j], b[j]))
    return triangles


# Vertex layout: inner loop 0..19, outer loop 20..39, inner ring 40..59, outer ring 60..79,
# inner-lip centre 80.
_TRIANGLES: Final = np.array(
    _strip(range(0, 20), range(20, 40))
    + _strip(range(20, 40), range(40, 60))
    + _strip(range(40, 60), range(60, 80))
    + [(i, (i + 1) % _LOOP, 80) for i in range(_LOOP)]
)


def warp_mouth(
    frame: npt.NDArray[np.uint8], landmarks: FaceLandmarks, shape: MouthShape
) -> MouthRegion | None:
    """Warp ``frame`` in place so the lips take ``shape``; the changed box, or ``None``."""
    points = landmarks.points
    mouth = _mouth_frame(points)
    if mouth.interocular < 8.0:  # too small a face to draw a mouth on
        return None
    outer = mouth.to_local(points[list(OUTER_LIPS), :2])
    inner = mouth.to_local(points[list(INNER_LIPS), :2])
    new_outer, new_inner = _target_loops(outer, inner, shape, mouth.interocular)
    ring1, ring2 = _rings(outer, mouth.interocular)
    moved1 = ring1 + _RING_FOLLOW * (new_outer - outer)
    source = np.concatenate([inner, outer, ring1, ring2, inner.mean(axis=0, keepdims=True)])
    target = np.concatenate(
        [new_inner, new_outer, moved1, ring2, new_inner.mean(axis=0, keepdims=True)]
    )
    source_px = mouth.to_frame(source)
    target_px = mouth.to_frame(target)
    height, width = frame.shape[:2]
    x0 = max(int(np.floor(target_px[:, 0].min())), 0)
    y0 = max(int(np.floor(target_px[:, 1].min())), 0)
    x1 = min(int(np.ceil(target_px[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(target_px[:, 1].max())) + 1, height)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    src_x, src_y = xs.copy(), ys.copy()
    covered = np.zeros(xs.shape, dtype=bool)
    _rasterise(source_px, target_px, xs=xs, ys=ys, src_x=src_x, src_y=src_y, covered=covered)
    if not covered.any():
        return None
    warped = sample_bilinear(frame, src_x, src_y)
    _fill_cavity(warped, xs=xs, ys=ys, mouth=mouth, new_inner=new_inner, inner=inner, shape=shape)
    region = frame[y0:y1, x0:x1]
    region[covered] = np.clip(warped[covered] + 0.5, 0, 255).astype(np.uint8)
    return MouthRegion(x0, y0, x1, y1, covered)


def _rasterise(
    source_px: npt.NDArray[np.float64],
    target_px: npt.NDArray[np.float64],
    *,
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    src_x: npt.NDArray[np.float64],
    src_y: npt.NDArray[np.float64],
    covered: npt.NDArray[np.bool_],
) -> None:
    """For every pixel inside a target triangle, where to read it in the source.

    The per-triangle algebra (inverse edge matrices, target -> source affine maps, bounding
    boxes) is done for all triangles at once; the loop only fills each triangle's box.
    """
    target = target_px[_TRIANGLES]
    source = source_px[_TRIANGLES]
    e1 = target[:, 1] - target[:, 0]
    e2 = target[:, 2] - target[:, 0]
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    usable = np.abs(det) > 1e-6
    safe = np.where(usable, det, 1.0)
    # (u, v) = inverse @ (p - t0): barycentric coordinates in the target triangle.
    inverse = (
        np.stack(
            [np.stack([e2[:, 1], -e2[:, 0]], axis=1), np.stack([-e1[:, 1], e1[:, 0]], axis=1)],
            axis=1,
        )
        / safe[:, None, None]
    )
    s1 = source[:, 1] - source[:, 0]
    s2 = source[:, 2] - source[:, 0]
    # src = s0 + u * s1 + v * s2 = linear @ (p - t0) + s0.
    linear = np.stack([s1, s2], axis=2) @ inverse
    x_origin, y_origin = float(xs[0, 0]), float(ys[0, 0])
    lows = np.floor(target.min(axis=1)).astype(int) - [int(x_origin), int(y_origin)]
    highs = np.ceil(target.max(axis=1)).astype(int) - [int(x_origin), int(y_origin)] + 1
    height, width = xs.shape
    for index in np.flatnonzero(usable).tolist():
        left, top = max(int(lows[index, 0]), 0), max(int(lows[index, 1]), 0)
        right, bottom = min(int(highs[index, 0]), width), min(int(highs[index, 1]), height)
        if right <= left or bottom <= top:
            continue
        t0x, t0y = float(target[index, 0, 0]), float(target[index, 0, 1])
        px = xs[top:bottom, left:right] - t0x
        py = ys[top:bottom, left:right] - t0y
        (i00, i01), (i10, i11) = inverse[index].tolist()
        u = i00 * px + i01 * py
        v = i10 * px + i11 * py
        inside = (u >= -1e-6) & (v >= -1e-6) & (u + v <= 1.0 + 1e-6)
        (l00, l01), (l10, l11) = linear[index].tolist()
        s0x, s0y = float(source[index, 0, 0]), float(source[index, 0, 1])
        dx, dy = px[inside], py[inside]
        src_x[top:bottom, left:right][inside] = l00 * dx + l01 * dy + s0x
        src_y[top:bottom, left:right][inside] = l10 * dx + l11 * dy + s0y
        covered[top:bottom, left:right] |= inside


def _fill_cavity(
    warped: npt.NDArray[np.float32],
    *,
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    mouth: _MouthFrame,
    new_inner: npt.NDArray[np.float64],
    inner: npt.NDArray[np.float64],
    shape: MouthShape,
) -> None:
    """Paint the mouth's inside where the target lips part wider than the source's."""
    target_gap = float(new_inner[5, 1] - new_inner[15, 1])
    source_gap = max(float(inner[5, 1] - inner[15, 1]), 0.0)
    if target_gap <= source_gap + 0.5:
        return
    local = mouth.to_local(np.stack([xs.ravel(), ys.ravel()], axis=1))
    u = local[:, 0].reshape(xs.shape)
    v = local[:, 1].reshape(xs.shape)
    # Upper and lower inner-lip curves as functions of u, corners included.
    upper = new_inner[[0, *_UPPER[::-1].tolist(), 10]]
    lower = new_inner[[0, *_LOWER.tolist(), 10]]
    upper = upper[np.argsort(upper[:, 0])]
    lower = lower[np.argsort(lower[:, 0])]
    y_top = np.interp(u, upper[:, 0], upper[:, 1])
    y_bottom = np.interp(u, lower[:, 0], lower[:, 1])
    inside_u = (u > new_inner[0, 0]) & (u < new_inner[10, 0])
    edge = np.minimum(v - y_top, y_bottom - v)
    alpha = np.clip(edge / 2.0, 0.0, 1.0) * inside_u
    if not alpha.any():
        return
    # Only the part of the gap that is new: the source's own opening stays as warped.
    strength = min(1.0, (target_gap - source_gap) / max(target_gap, 1e-6) * 1.5)
    gap = np.maximum(y_bottom - y_top, 1e-6)
    depth = np.clip(1.0 - np.abs((v - y_top) / gap - 0.5) * 2.0, 0.0, 1.0)
    colour = _CAVITY[None, None, :] + (_CAVITY_DEEP - _CAVITY)[None, None, :] * depth[..., None]
    half_width = max(float(new_inner[10, 0] - new_inner[0, 0]) / 2, 1e-6)
    across = np.clip(1.0 - (u / half_width) ** 2, 0.0, 1.0)
    teeth_height = np.minimum(0.32 * gap, 0.06 * mouth.interocular) * np.sqrt(across)
    # Teeth fill the middle of the mouth; its corners stay dark (the buccal corridor). Their
    # edge against the cavity is soft over a pixel, and the upper lip shades their top.
    teeth_weight = np.clip(teeth_height - (v - y_top) + 0.5, 0.0, 1.0)
    lower_weight = np.clip(0.4 * teeth_height - (y_bottom - v) + 0.5, 0.0, 1.0)
    weight = np.maximum(teeth_weight, lower_weight) * np.clip((across - 0.2) * 4.0, 0.0, 1.0)
    below = np.clip((v - y_top) / np.maximum(teeth_height, 1e-6), 0.0, 1.0)
    lip_shadow = 0.7 + 0.3 * np.clip(below * 4.0, 0.0, 1.0)
    shade = ((0.6 + 0.35 * across) * lip_shadow * (1.0 - 0.15 * below))[..., None]
    colour = colour + (_TEETH[None, None, :] * shade - colour) * weight[..., None]
    blend = (alpha * strength)[..., None]
    warped[...] = warped * (1.0 - blend) + colour * blend
