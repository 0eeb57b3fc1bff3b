"""The figures of ``parley bench dub``: lip-sync correlation and lag, PSNR outside the mouth.

* **Mouth opening** is read back from the *output* video with the same FaceMesh the pipeline
  uses (:func:`media.dub.face_mesh.mouth_opening`, inner-lip gap over eye-corner distance), so
  what is measured is what a viewer sees, after the warp and the encoder.
* **Loudness envelope** of the new speech: RMS over a one-frame window centred on each frame.
* **Correlation** of the two series over lags of up to ``max_lag_s`` either way; the peak and its
  lag (refined between frames by a parabola through the peak and its neighbours). A positive
  lag means the mouth moves after the sound.
* **PSNR outside the mouth**: output frames against the input's, over every pixel outside the
  boxes the warp touched (grown by a margin for the encoder's blocks), pooled over the video.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from media.dub.face_detect import FaceDetector
from media.dub.face_mesh import FaceMesh, mouth_opening
from media.dub.face_track import FaceTracker
from media.dub.video_source import iter_frames

__all__ = [
    "SyncFigure",
    "loudness_envelope",
    "measure_openings",
    "psnr_outside",
    "sync_figure",
]

FloatSeries = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SyncFigure:
    correlation: float
    lag_ms: float


def measure_openings(
    path: Path, tracker: FaceTracker | None = None
) -> tuple[FloatSeries, FloatSeries]:
    """Frame times and mouth openings of the video at ``path`` (NaN where no face)."""
    tracker = tracker if tracker is not None else FaceTracker(FaceDetector(), FaceMesh())
    times: list[float] = []
    openings: list[float] = []
    for rgb, time_s in iter_frames(path):
        landmarks = tracker.track(rgb)
        times.append(time_s)
        openings.append(mouth_opening(landmarks) if landmarks is not None else math.nan)
    return np.asarray(times), np.asarray(openings)


def loudness_envelope(
    samples: npt.NDArray[np.float32], sample_rate: int, times_s: FloatSeries, window_s: float
) -> FloatSeries:
    """RMS of ``samples`` in a ``window_s`` window centred on each time."""
    half = max(1, round(window_s * sample_rate / 2))
    squared = np.concatenate([[0.0], np.cumsum(np.asarray(samples, dtype=np.float64) ** 2)])
    centres = np.round(np.asarray(times_s) * sample_rate).astype(np.int64)
    lo = np.clip(centres - half, 0, samples.size)
    hi = np.clip(centres + half, 0, samples.size)
    energy = (squared[hi] - squared[lo]) / np.maximum(hi - lo, 1)
    result: FloatSeries = np.sqrt(energy)
    return result


def _correlation(a: FloatSeries, b: FloatSeries) -> float:
    valid = np.isfinite(a) & np.isfinite(b)
    if valid.sum() < 3:
        return math.nan
    x, y = a[valid], b[valid]
    if x.std() < 1e-12 or y.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def sync_figure(
    openings: FloatSeries, envelope: FloatSeries, *, frame_s: float, max_lag_s: float = 0.2
) -> SyncFigure:
    """Peak correlation of mouth opening and loudness over lags, and the lag at the peak."""
    max_lag = max(1, round(max_lag_s / frame_s))
    lags = range(-max_lag, max_lag + 1)
    values = []
    for lag in lags:
        # lag > 0: the opening at t + lag against the loudness at t.
        if lag >= 0:
            values.append(_correlation(openings[lag:], envelope[: envelope.size - lag]))
        else:
            values.append(_correlation(openings[: openings.size + lag], envelope[-lag:]))
    series = np.asarray(values)
    if not np.isfinite(series).any():
        return SyncFigure(math.nan, math.nan)
    best = int(np.nanargmax(series))
    offset = 0.0
    if 0 < best < series.size - 1 and np.isfinite(series[best - 1 : best + 2]).all():
        left, centre, right = series[best - 1 : best + 2]
        curvature = left - 2 * centre + right
        if curvature < 0:
            offset = 0.5 * (left - right) / curvature
    return SyncFigure(float(series[best]), (lags[best] + offset) * frame_s * 1000)


def psnr_outside(
    reference: Iterable[npt.NDArray[np.uint8]],
    test: Iterable[npt.NDArray[np.uint8]],
    boxes: Sequence[tuple[int, int, int, int] | None],
    *,
    margin: int = 16,
) -> float:
    """PSNR (dB) of ``test`` against ``reference`` frames, outside the (grown) boxes."""
    squared_error = 0.0
    count = 0
    for index, (ref, out) in enumerate(zip(reference, test, strict=False)):
        height = min(ref.shape[0], out.shape[0])
        width = min(ref.shape[1], out.shape[1])
        diff = ref[:height, :width].astype(np.float64) - out[:height, :width]
        mask = np.ones((height, width), dtype=bool)
        box = boxes[index] if index < len(boxes) else None
        if box is not None:
            x0, y0, x1, y1 = box
            mask[max(y0 - margin, 0) : y1 + margin, max(x0 - margin, 0) : x1 + margin] = False
        squared_error += float((diff[mask] ** 2).sum())
        count += int(mask.sum()) * diff.shape[2]
    if count == 0:
        return math.nan
    mse = squared_error / count
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
