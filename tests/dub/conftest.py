"""Shared material for the dub tests: small real test videos, built once per session.

The videos come from :mod:`simulations.dub_material` (the packaged portrait, slight head motion,
piper speech), at 480x270 and a few seconds, so the whole folder stays CI-sized.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from simulations.dub_material import MaterialSpec, make_test_video, portrait, speak_english

SENTENCE = "Thank you for coming to the meeting today."
SMALL = MaterialSpec(width=480, height=270, fps=25, face_share=0.95, crf=12)


@functools.cache
def english_speech() -> npt.NDArray[np.float32]:
    return speak_english([SENTENCE], lead_s=0.3)


@pytest.fixture(scope="session")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Videos by name: "one" face, "none", "two" faces (all with the same speech)."""
    folder = tmp_path_factory.mktemp("dub-material")
    speech = english_speech()
    return {
        "one": make_test_video(folder / "one.mp4", speech, spec=SMALL),
        "none": make_test_video(folder / "none.mp4", speech, spec=replace(SMALL, faces=0)),
        "two": make_test_video(folder / "two.mp4", speech, spec=replace(SMALL, faces=2)),
    }


@pytest.fixture(scope="session")
def face_frame() -> npt.NDArray[np.uint8]:
    """The portrait on a 640x480 canvas (face about 190 px wide)."""
    canvas = np.full((480, 640, 3), 70, dtype=np.uint8)
    picture = portrait()[60:420, 60:452]
    canvas[60:420, 124:516] = picture
    return canvas
