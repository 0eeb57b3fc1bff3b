"""Writing the warped pixels back into YUV 4:2:0, checked with FFmpeg's own conversion."""

from __future__ import annotations

import av
import numpy as np

from media.dub.mouth_warp import MouthRegion
from media.dub.yuv_patch import write_rgb_patch


def _frame() -> av.VideoFrame:
    rng = np.random.default_rng(7)
    rgb = np.clip(rng.normal(128, 30, (64, 80, 3)), 0, 255).astype(np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def test_changed_pixels_round_trip_and_the_rest_stays_bit_exact() -> None:
    frame = _frame()
    yuv = frame.to_ndarray()
    original = yuv.copy()
    rgb = frame.to_ndarray(format="rgb24")
    changed = np.zeros((20, 24), dtype=bool)
    changed[4:16, 6:18] = True
    rgb[21:41, 31:55][changed] = (200, 40, 60)
    write_rgb_patch(yuv, rgb, MouthRegion(31, 21, 55, 41, changed))
    # Oracle: FFmpeg converts our YUV back to RGB: the patch reads as the colour we painted.
    back = av.VideoFrame.from_ndarray(yuv, format="yuv420p").to_ndarray(format="rgb24")
    inner = back[21 + 6 : 21 + 14, 31 + 8 : 31 + 16].astype(int)
    assert np.abs(inner - np.array([200, 40, 60])).max() <= 6
    # Outside the changed pixels' 2x2 chroma blocks, not one byte moved.
    height = 64
    luma_changed = np.zeros((64, 80), dtype=bool)
    luma_changed[25:37, 37:49] = True
    assert np.array_equal(yuv[:height][~luma_changed], original[:height][~luma_changed])
    chroma_rows = slice(height, None)
    diff = yuv[chroma_rows] != original[chroma_rows]
    # The 12x12 patch starts at odd (37, 25): it touches 7x7 chroma blocks in U and in V.
    assert diff.sum() <= 2 * 7 * 7


def test_nothing_changed_writes_nothing() -> None:
    frame = _frame()
    yuv = frame.to_ndarray()
    before = yuv.copy()
    rgb = np.zeros((64, 80, 3), dtype=np.uint8)
    write_rgb_patch(yuv, rgb, MouthRegion(10, 10, 20, 20, np.zeros((10, 10), dtype=bool)))
    assert np.array_equal(yuv, before)
