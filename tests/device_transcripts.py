"""Whisper's reading of what a sound device played (the device tests' oracle)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daemon.call_models import CallModels
from media.features import SAMPLE_RATE, log_mel


def speech_only(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The recording without its long silences (Whisper loops on 20 s of near silence)."""
    block = SAMPLE_RATE // 10
    blocks = [audio[i : i + block] for i in range(0, audio.size, block)]
    loud = [float(np.max(np.abs(b))) > 0.01 if b.size else False for b in blocks]
    keep = [
        b
        for i, b in enumerate(blocks)
        if any(loud[max(0, i - 3) : i + 4])  # 0.3 s either side of speech
    ]
    return np.concatenate(keep) if keep else audio[:0]


def transcribe(models: CallModels, language: str, audio: npt.NDArray[np.float32]) -> str:
    """Whisper's text of ``audio`` (16 kHz) in ``language``, long silences left out."""
    return models.transcriber(language).transcribe_features(log_mel(speech_only(audio))).text
