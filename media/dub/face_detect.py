"""BlazeFace (full range) on LiteRT: anchors, box decoding and weighted NMS, in numpy.

A re-implementation of MediaPipe's ``SsdAnchorsCalculator`` and
``TensorsToDetectionsCalculator``: the frame letterboxed into the model's square input, scaled
to [-1, 1]; one anchor per cell (48x48 at stride 4 for the full-range model; the short-range
model's 16x16x2 + 8x8x6 layout is :func:`ssd_anchors` with strides ``(8, 16, 16, 16)``); per
anchor a box (centre, size) and six keypoints (eyes, nose tip, mouth, ear tragions) as offsets
in input pixels, and one logit. The full-range model is used because a speaker in a 720p frame
is a small face: measured on the test portrait, the short-range model put the eye keypoints
~25 px off when the face was 190 px wide in a 1280 px frame. Overlapping boxes are merged by
score-weighted averaging (MediaPipe's "weighted" non-maximum suppression), which steadies the
box from frame to frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from media.dub.face_models import DETECTOR_FILE, TfliteModel, load_model
from media.dub.geometry import box_downsample, warp_affine

__all__ = ["FaceBox", "FaceDetector", "ssd_anchors"]

INPUT_SIZE: Final = 192
MIN_SCORE: Final = 0.5
NMS_IOU: Final = 0.3
_RAW_SCORE_LIMIT: Final = 80.0
_STRIDES: Final = (4,)


@dataclass(frozen=True, slots=True)
class FaceBox:
    """A face in frame pixels: box corners, six keypoints (6, 2) and the score in (0, 1)."""

    x0: float
    y0: float
    x1: float
    y1: float
    keypoints: npt.NDArray[np.float64]
    score: float

    @property
    def right_eye(self) -> npt.NDArray[np.float64]:
        """The subject's right eye (image left), keypoint 0."""
        return np.asarray(self.keypoints[0], dtype=np.float64)

    @property
    def left_eye(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.keypoints[1], dtype=np.float64)

    @property
    def mouth(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.keypoints[3], dtype=np.float64)

    @property
    def width(self) -> float:
        return self.x1 - self.x0


def ssd_anchors(
    input_size: int = INPUT_SIZE, strides: tuple[int, ...] = _STRIDES
) -> npt.NDArray[np.float32]:
    """Anchor centres (N, 2) in [0, 1], in the order the model's outputs use."""
    anchors: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        same = layer
        repeats = 0
        while same < len(strides) and strides[same] == strides[layer]:
            same += 1
            # Two aspect ratios per layer, except a lone layer (interpolated scale 0): one.
            repeats += 2 if len(strides) > 1 else 1
        cells = input_size // strides[layer]
        for y in range(cells):
            for x in range(cells):
                anchors.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * repeats)
        layer = same
    return np.asarray(anchors, dtype=np.float32)


def _iou(box: npt.NDArray[np.float64], others: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    result: npt.NDArray[np.float64] = inter / np.maximum(area + areas - inter, 1e-12)
    return result


def weighted_nms(
    boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], iou: float = NMS_IOU
) -> list[tuple[npt.NDArray[np.float64], float]]:
    """Clusters of overlapping rows of ``boxes`` (corners then keypoints), score-averaged."""
    order = np.argsort(-scores)
    remaining = order
    merged: list[tuple[npt.NDArray[np.float64], float]] = []
    while remaining.size:
        top = remaining[0]
        overlap = _iou(boxes[top, :4], boxes[remaining, :4])
        cluster = remaining[overlap > iou]
        weights = scores[cluster]
        merged.append(
            (
                (boxes[cluster] * weights[:, None]).sum(axis=0) / weights.sum(),
                float(scores[top]),
            )
        )
        remaining = remaining[overlap <= iou]
    return merged


class FaceDetector:
    """Faces in an RGB frame (H, W, 3) uint8, best first."""

    def __init__(self, *, threads: int = 1, min_score: float = MIN_SCORE) -> None:
        self._model: TfliteModel = load_model(DETECTOR_FILE, threads=threads)
        self._anchors = ssd_anchors().astype(np.float64)
        self._min_score = min_score

    def detect(self, frame: npt.NDArray[np.uint8]) -> list[FaceBox]:
        height, width = frame.shape[:2]
        factor = max(1, max(height, width) // (2 * INPUT_SIZE))
        small = box_downsample(frame, factor)
        scale = max(small.shape[0], small.shape[1]) / INPUT_SIZE
        # Letterbox: the longer side fills the input, the image centred on the shorter one.
        pad_x = (INPUT_SIZE * scale - small.shape[1]) / 2
        pad_y = (INPUT_SIZE * scale - small.shape[0]) / 2
        to_small = np.array([[scale, 0.0, -pad_x], [0.0, scale, -pad_y]])
        tensor = warp_affine(small, to_small, (INPUT_SIZE, INPUT_SIZE))
        # Outside the picture the letterbox is black, as MediaPipe pads it.
        xs = np.arange(INPUT_SIZE) * scale - pad_x
        ys = np.arange(INPUT_SIZE) * scale - pad_y
        outside = (ys[:, None] < -0.5) | (ys[:, None] > small.shape[0] - 0.5)
        outside = outside | (xs[None, :] < -0.5) | (xs[None, :] > small.shape[1] - 0.5)
        tensor[outside] = 0.0
        tensor = tensor / 127.5 - 1.0
        outputs = self._model.run(tensor[None].astype(np.float32))
        # The outputs come in an unnamed order: the boxes have 16 values per anchor, scores 1.
        raw_boxes, raw_scores = sorted(outputs, key=lambda out: -out.shape[-1])
        logits = np.clip(
            raw_scores.reshape(-1).astype(np.float64), -_RAW_SCORE_LIMIT, _RAW_SCORE_LIMIT
        )
        scores = 1.0 / (1.0 + np.exp(-logits))
        keep = scores > self._min_score
        if not keep.any():
            return []
        points = raw_boxes.reshape(-1, 8, 2)[keep].astype(np.float64) / INPUT_SIZE
        anchors = self._anchors[keep]
        centre = points[:, 0] + anchors
        half = points[:, 1] / 2
        keypoints = points[:, 2:] + anchors[:, None, :]
        rows = np.concatenate(
            [centre - half, centre + half, keypoints.reshape(len(points), -1)], axis=1
        )
        valid = (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
        faces: list[FaceBox] = []
        # Input units -> frame pixels: undo the letterbox, then the box downsampling.
        unit = INPUT_SIZE * scale * factor
        # Normalised n is input pixel n * size - 0.5 (pixel centres at integers); a downsampled
        # pixel i covers frame pixels [i * factor, (i + 1) * factor).
        offset = (np.array([pad_x, pad_y]) + 0.5 * scale) * factor - (factor - 1) / 2
        for row, score in weighted_nms(rows[valid], scores[keep][valid]):
            corners = row[:4].reshape(2, 2) * unit - offset
            kps = row[4:].reshape(6, 2) * unit - offset
            faces.append(
                FaceBox(
                    x0=float(corners[0, 0]),
                    y0=float(corners[0, 1]),
                    x1=float(corners[1, 0]),
                    y1=float(corners[1, 1]),
                    keypoints=kps,
                    score=score,
                )
            )
        return faces
