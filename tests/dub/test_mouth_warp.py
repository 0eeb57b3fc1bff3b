"""The lip warp, judged by FaceMesh reading the mouth back from the warped picture."""

from __future__ import annotations

import numpy as np
import pytest

from media.dub.face_detect import FaceDetector
from media.dub.face_mesh import FaceMesh, mouth_opening, roi_from_box, roi_from_landmarks
from media.dub.mouth_warp import warp_mouth
from media.dub.visemes import REST, MouthShape, viseme_for


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def landmarks(face_frame, mesh):
    face = FaceDetector().detect(face_frame)[0]
    first = mesh.landmarks(face_frame, roi_from_box(face))
    return mesh.landmarks(face_frame, roi_from_landmarks(first))


def _read_back(frame, mesh, landmarks) -> float:
    return mouth_opening(mesh.landmarks(frame, roi_from_landmarks(landmarks)))


def test_opening_follows_the_target(face_frame, mesh, landmarks) -> None:
    before = _read_back(face_frame, mesh, landmarks)
    measured = []
    for opening in (0.05, 0.12, 0.2):
        frame = face_frame.copy()
        warp_mouth(frame, landmarks, MouthShape(opening, 1.0, 0.0, 0.0))
        measured.append(_read_back(frame, mesh, landmarks))
    assert before < measured[0] < measured[1] < measured[2]
    assert measured[2] > before + 0.08


def test_only_the_mouth_region_changes(face_frame, landmarks) -> None:
    frame = face_frame.copy()
    region = warp_mouth(frame, landmarks, viseme_for("a")[0])
    assert region is not None
    changed = np.any(frame != face_frame, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.size > 200
    assert region.x0 <= xs.min() and xs.max() < region.x1
    assert region.y0 <= ys.min() and ys.max() < region.y1
    # The region is about the mouth's size, not the face's.
    assert region.x1 - region.x0 < 1.5 * landmarks.interocular


def test_rest_keeps_a_closed_mouth_closed(face_frame, mesh, landmarks) -> None:
    frame = face_frame.copy()
    warp_mouth(frame, landmarks, REST)
    assert _read_back(frame, mesh, landmarks) < 0.03
    # Closing an already closed mouth barely changes it.
    assert np.abs(frame.astype(int) - face_frame).mean() < 0.5


def test_rounding_narrows_and_spreading_widens_the_mouth(face_frame, mesh, landmarks) -> None:
    def width_after(phoneme: str) -> float:
        frame = face_frame.copy()
        warp_mouth(frame, landmarks, viseme_for(phoneme)[0])
        after = mesh.landmarks(frame, roi_from_landmarks(landmarks))
        return float(np.linalg.norm(after.points[61, :2] - after.points[291, :2]))

    before = float(np.linalg.norm(landmarks.points[61, :2] - landmarks.points[291, :2]))
    rounded, spread = width_after("u"), width_after("i")
    # FaceMesh's face prior damps what it reads back, but the order and a clear gap remain.
    assert rounded < 0.98 * before < spread
    assert spread > 1.03 * rounded


def test_a_tiny_face_is_left_alone(face_frame, landmarks) -> None:
    small = landmarks.__class__(points=landmarks.points * 0.02, presence=1.0)
    frame = face_frame.copy()
    assert warp_mouth(frame, small, viseme_for("a")[0]) is None
    assert np.array_equal(frame, face_frame)
