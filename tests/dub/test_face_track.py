"""Detection once per shot, tracking between detections, frames without a face left alone."""

from __future__ import annotations

import numpy as np
import pytest

from media.dub.face_detect import FaceDetector
from media.dub.face_mesh import FaceMesh
from media.dub.face_track import FaceTracker, TrackerConfig


@pytest.fixture(scope="module")
def models() -> tuple[FaceDetector, FaceMesh]:
    return FaceDetector(), FaceMesh()


def _shifted(frame: np.ndarray, dx: int) -> np.ndarray:
    return np.roll(frame, dx, axis=1)


def test_detects_per_shot_and_tracks_in_between(models, face_frame) -> None:
    tracker = FaceTracker(*models, config=TrackerConfig(redetect_every=12))
    flat = np.full_like(face_frame, 70)
    found = [tracker.track(flat) for _ in range(3)]
    # The face appears (a cut): found on its first frame, then followed as it moves.
    found += [tracker.track(_shifted(face_frame, 2 * n)) for n in range(20)]
    assert found[:3] == [None] * 3
    assert all(landmarks is not None for landmarks in found[3:])
    assert tracker.counts.cuts == 1
    # One detection for the empty shot's first frame, one at the cut: tracking did the rest.
    assert tracker.counts.detections == 2
    # The tracked mouth moved with the face (2 px per frame).
    first, last = found[3], found[-1]
    assert first is not None and last is not None
    moved = last.points[13, 0] - first.points[13, 0]
    assert moved == pytest.approx(38, abs=4)


def test_a_face_that_leaves_is_dropped_at_once(models, face_frame) -> None:
    tracker = FaceTracker(*models)
    assert tracker.track(face_frame) is not None
    assert tracker.track(np.full_like(face_frame, 70)) is None


def test_without_a_face_detection_runs_every_few_frames(models, face_frame) -> None:
    tracker = FaceTracker(*models, config=TrackerConfig(redetect_every=5))
    rng = np.random.default_rng(3)
    background = np.full_like(face_frame, 90)
    for _ in range(20):
        noisy = np.clip(background + rng.integers(-2, 3, background.shape), 0, 255)
        assert tracker.track(noisy.astype(np.uint8)) is None
    assert 4 <= tracker.counts.detections <= 5
