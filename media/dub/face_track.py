"""Find the speaker's face once per shot and follow it between detections.

Theory of operation
-------------------
Per frame, :meth:`FaceTracker.track` answers "where are the speaker's landmarks?" (or ``None``):

* **Detect** (BlazeFace) on the first frame, on a shot cut, when tracking was lost, and every
  :attr:`TrackerConfig.redetect_every` frames while no face is held (so a face that walks in is
  found within a fraction of a second). Of several faces the largest is taken as the speaker;
  the others are left untouched.
* **Track** between detections: FaceMesh runs on a crop derived from the previous frame's
  landmarks (MediaPipe's landmarks-to-ROI loop). When its presence score drops below
  :data:`media.dub.face_mesh.MIN_PRESENCE`, the face is lost and the next frame detects again.
* **Shot cuts** are found on a 32x18 grey thumbnail: a mean absolute change of more than
  :attr:`TrackerConfig.cut_threshold` grey levels between consecutive frames.

Stage times (detection, landmarks) are recorded per call for the job's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from media.dub.face_detect import FaceBox, FaceDetector
from media.dub.face_mesh import (
    MIN_PRESENCE,
    FaceLandmarks,
    FaceMesh,
    Roi,
    roi_from_box,
    roi_from_landmarks,
)
from media.dub.geometry import box_downsample
from media.dub.stage_stats import StageStats

__all__ = ["FaceTracker", "TrackerConfig", "TrackerCounts"]

_THUMB: Final = (32, 18)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackerConfig:
    #: While no face is held, detect again after this many frames.
    redetect_every: int = 12
    #: Mean absolute thumbnail change (grey levels) that counts as a cut.
    cut_threshold: float = 24.0
    #: Faces narrower than this (pixels) are too small to lip-sync.
    min_face_px: float = 48.0

    def __post_init__(self) -> None:
        if self.redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1, got {self.redetect_every}")


@dataclass(slots=True)
class TrackerCounts:
    detections: int = 0
    cuts: int = 0


class FaceTracker:
    """Landmarks of the speaker frame by frame (frames in order, RGB uint8)."""

    def __init__(
        self,
        detector: FaceDetector,
        mesh: FaceMesh,
        *,
        config: TrackerConfig | None = None,
        stats: StageStats | None = None,
    ) -> None:
        self._detector = detector
        self._mesh = mesh
        self._config = config if config is not None else TrackerConfig()
        self._held: FaceLandmarks | None = None
        self._since_detection = 0
        self._thumb: npt.NDArray[np.float32] | None = None
        self.counts = TrackerCounts()
        #: "detect" and "landmarks" latencies; the pipeline passes its own to collect them.
        self.stats = stats if stats is not None else StageStats()

    def track(self, frame: npt.NDArray[np.uint8]) -> FaceLandmarks | None:
        cut = self._is_cut(frame)
        if cut:
            self.counts.cuts += 1
            self._held = None
        if self._held is not None:
            landmarks = self._landmarks(frame, roi_from_landmarks(self._held))
            self._held = landmarks if landmarks.presence >= MIN_PRESENCE else None
            if self._held is not None:
                return self._held
            cut = True  # lost: detect on this very frame
        self._since_detection += 1
        if (
            cut
            or self._since_detection >= self._config.redetect_every
            or self.counts.detections == 0
        ):
            self._since_detection = 0
            box = self._detect(frame)
            if box is not None:
                landmarks = self._landmarks(frame, roi_from_box(box))
                if landmarks.presence >= MIN_PRESENCE:
                    # One refinement: the crop from the detection is coarse.
                    landmarks = self._landmarks(frame, roi_from_landmarks(landmarks))
                    self._held = landmarks if landmarks.presence >= MIN_PRESENCE else None
        return self._held

    def _detect(self, frame: npt.NDArray[np.uint8]) -> FaceBox | None:
        with self.stats.timed("detect"):
            found = self._detector.detect(frame)
        faces = [face for face in found if face.width >= self._config.min_face_px]
        self.counts.detections += 1
        if not faces:
            return None
        return max(faces, key=lambda face: face.width)

    def _landmarks(self, frame: npt.NDArray[np.uint8], roi: Roi) -> FaceLandmarks:
        with self.stats.timed("landmarks"):
            return self._mesh.landmarks(frame, roi)

    def _is_cut(self, frame: npt.NDArray[np.uint8]) -> bool:
        height, width = frame.shape[:2]
        # Subsample to about 4x the thumbnail, then average 4x4 blocks (cheap and steady).
        step = max(1, min(width // _THUMB[0], height // _THUMB[1]) // 4)
        grey = box_downsample(frame[::step, ::step], 4)
        thumb = grey.mean(axis=2, dtype=np.float32)
        previous, self._thumb = self._thumb, thumb
        if previous is None or previous.shape != thumb.shape:
            return False
        return float(np.abs(thumb - previous).mean()) > self._config.cut_threshold
