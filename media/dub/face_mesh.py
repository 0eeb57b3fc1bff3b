"""FaceMesh (468 landmarks) on LiteRT, on a rotated square crop around the face.

MediaPipe's face-landmark stage, in numpy: the region of interest is a square around the face,
rotated so the eyes are level (from the detector's eye keypoints, or from the previous frame's
eye corners when tracking), 1.5 times the face's size; it is resampled to the model's 192x192
input in [0, 1]. The model returns (x, y, z) per landmark in crop pixels and a face-presence
logit; landmarks are mapped back to frame pixels with the crop's affine map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from media.dub.face_detect import FaceBox
from media.dub.face_models import MESH_FILE, TfliteModel, load_model
from media.dub.geometry import Affine, apply_affine, warp_affine

__all__ = [
    "INNER_LIPS",
    "OUTER_LIPS",
    "FaceLandmarks",
    "FaceMesh",
    "Roi",
    "mouth_opening",
    "roi_from_box",
    "roi_from_landmarks",
]

MESH_INPUT: Final = 192
ROI_SCALE: Final = 1.5
#: Below this presence probability the crop holds no face (tracking lost).
MIN_PRESENCE: Final = 0.5

#: Lip contours, each a closed loop starting at the subject's right mouth corner, lower lip
#: first (MediaPipe's FACEMESH_LIPS order).
OUTER_LIPS: Final = (
    61,
    146,
    91,
    181,
    84,
    17,
    314,
    405,
    321,
    375,
    291,
    409,
    270,
    269,
    267,
    0,
    37,
    39,
    40,
    185,
)
INNER_LIPS: Final = (
    78,
    95,
    88,
    178,
    87,
    14,
    317,
    402,
    318,
    324,
    308,
    415,
    310,
    311,
    312,
    13,
    82,
    81,
    80,
    191,
)
RIGHT_EYE_OUTER: Final = 33
LEFT_EYE_OUTER: Final = 263
UPPER_LIP_INNER: Final = 13
LOWER_LIP_INNER: Final = 14


@dataclass(frozen=True, slots=True)
class Roi:
    """A square crop: centre and side in frame pixels, rotation in radians (eyes level at 0)."""

    cx: float
    cy: float
    size: float
    angle: float

    def to_frame(self, side: int = MESH_INPUT) -> Affine:
        """Affine map from crop pixels (0..side-1) to frame pixels."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        unit = self.size / side
        half = (side - 1) / 2
        return np.array(
            [
                [cos * unit, -sin * unit, self.cx - (cos * half - sin * half) * unit],
                [sin * unit, cos * unit, self.cy - (sin * half + cos * half) * unit],
            ]
        )


@dataclass(frozen=True, slots=True)
class FaceLandmarks:
    """468 landmarks (x, y in frame pixels, z relative) and the presence probability."""

    points: npt.NDArray[np.float64]
    presence: float

    @property
    def interocular(self) -> float:
        return float(
            np.linalg.norm(self.points[LEFT_EYE_OUTER, :2] - self.points[RIGHT_EYE_OUTER, :2])
        )


def mouth_opening(landmarks: FaceLandmarks) -> float:
    """Inner-lip gap at the middle of the mouth, in units of the outer eye-corner distance."""
    gap = np.linalg.norm(
        landmarks.points[UPPER_LIP_INNER, :2] - landmarks.points[LOWER_LIP_INNER, :2]
    )
    return float(gap) / max(landmarks.interocular, 1e-6)


def _angle(right: npt.NDArray[np.float64], left: npt.NDArray[np.float64]) -> float:
    return math.atan2(float(left[1] - right[1]), float(left[0] - right[0]))


def roi_from_box(box: FaceBox) -> Roi:
    size = max(box.x1 - box.x0, box.y1 - box.y0) * ROI_SCALE
    return Roi(
        cx=(box.x0 + box.x1) / 2,
        cy=(box.y0 + box.y1) / 2,
        size=size,
        angle=_angle(box.right_eye, box.left_eye),
    )


def roi_from_landmarks(landmarks: FaceLandmarks) -> Roi:
    """The next frame's crop: the landmarks' box in the eye-levelled frame, 1.5 times."""
    points = landmarks.points[:, :2]
    angle = _angle(points[RIGHT_EYE_OUTER], points[LEFT_EYE_OUTER])
    cos, sin = math.cos(angle), math.sin(angle)
    aligned = points @ np.array([[cos, -sin], [sin, cos]])
    low, high = aligned.min(axis=0), aligned.max(axis=0)
    centre = (low + high) / 2
    cx = centre[0] * cos - centre[1] * sin
    cy = centre[0] * sin + centre[1] * cos
    return Roi(cx=float(cx), cy=float(cy), size=float(max(high - low)) * ROI_SCALE, angle=angle)


class FaceMesh:
    """Landmarks of the face inside a :class:`Roi` of an RGB frame."""

    def __init__(self, *, threads: int = 1) -> None:
        self._model: TfliteModel = load_model(MESH_FILE, threads=threads)

    def landmarks(self, frame: npt.NDArray[np.uint8], roi: Roi) -> FaceLandmarks:
        to_frame = roi.to_frame()
        crop = warp_affine(frame, to_frame, (MESH_INPUT, MESH_INPUT)) / 255.0
        outputs = self._model.run(crop[None].astype(np.float32))
        raw_points, raw_presence = sorted(outputs, key=lambda out: -out.size)
        points = raw_points.reshape(-1, 3).astype(np.float64)
        frame_xy = apply_affine(to_frame, points[:, :2])
        z = points[:, 2:3] * roi.size / MESH_INPUT
        logit = float(np.clip(raw_presence.reshape(-1)[0], -80.0, 80.0))
        return FaceLandmarks(
            points=np.concatenate([frame_xy, z], axis=1), presence=1.0 / (1.0 + math.exp(-logit))
        )
