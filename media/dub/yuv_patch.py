"""Put the warped mouth back into the decoded YUV 4:2:0 picture, and nothing else.

The frames are analysed and warped in RGB, but converting a whole frame RGB -> YUV again for
the encoder would shift every pixel by a level or two (a second chroma subsampling, rounding):
measured on the test video, that alone cost ~3 dB of PSNR outside the mouth. So the encoder gets
the decoder's own YUV planes, with only the pixels the warp changed converted back (BT.601
limited range, the convention FFmpeg's scaler used to make the RGB), luma per pixel and chroma
per 2x2 block that holds a changed pixel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from media.dub.mouth_warp import MouthRegion

__all__ = ["write_rgb_patch"]

_Y: tuple[float, float, float] = (65.481, 128.553, 24.966)
_CB: tuple[float, float, float] = (-37.797, -74.203, 112.0)
_CR: tuple[float, float, float] = (112.0, -93.786, -18.214)


def _channel(
    rgb: npt.NDArray[np.float32], weights: tuple[float, float, float], offset: float
) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = (
        rgb[..., 0] * (weights[0] / 255)
        + rgb[..., 1] * (weights[1] / 255)
        + rgb[..., 2] * (weights[2] / 255)
        + offset
    )
    return result


def write_rgb_patch(
    yuv: npt.NDArray[np.uint8], rgb: npt.NDArray[np.uint8], region: MouthRegion
) -> None:
    """Copy ``region``'s changed pixels of ``rgb`` (H, W, 3) into ``yuv`` (3H/2, W) in place."""
    height, width = rgb.shape[:2]
    if yuv.shape != (height * 3 // 2, width) or height % 2 or width % 2:
        raise ValueError(f"a {yuv.shape} yuv420p array does not match a {rgb.shape} picture")
    # Whole chroma blocks: widen the box to even bounds.
    x0, y0 = region.x0 - region.x0 % 2, region.y0 - region.y0 % 2
    x1, y1 = min(region.x1 + region.x1 % 2, width), min(region.y1 + region.y1 % 2, height)
    changed = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    changed[region.y0 - y0 : region.y1 - y0, region.x0 - x0 : region.x1 - x0] = region.changed
    if not changed.any():
        return
    patch = rgb[y0:y1, x0:x1].astype(np.float32)
    luma = yuv[:height]
    luma_box = luma[y0:y1, x0:x1]
    luma_box[changed] = np.clip(_channel(patch, _Y, 16.0) + 0.5, 0, 255).astype(np.uint8)[changed]
    blocks = changed.reshape(changed.shape[0] // 2, 2, changed.shape[1] // 2, 2).any(axis=(1, 3))
    quarter = (height // 2) * (width // 2)
    planes = (
        yuv[height:].reshape(-1)[:quarter].reshape(height // 2, width // 2),
        yuv[height:].reshape(-1)[quarter:].reshape(height // 2, width // 2),
    )
    for plane, weights in zip(planes, (_CB, _CR), strict=True):
        full = _channel(patch, weights, 128.0)
        averaged = full.reshape(full.shape[0] // 2, 2, full.shape[1] // 2, 2).mean(axis=(1, 3))
        box = plane[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        box[blocks] = np.clip(averaged + 0.5, 0, 255).astype(np.uint8)[blocks]
