"""Test helpers: real speech from espeak-ng, media files from ffmpeg, one shared Whisper model.

Audio is generated into pytest's temporary folders rather than checked in, so fixtures stay
tiny and the oracle (faster-whisper) sees exactly the same input as the code under test.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from media.models import load_whisper

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

# Two sentences, about 5 s of speech: long enough for two segments and word timings.
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Peer to peer calls need good captions."


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def synthesize_speech(
    text: str, wav_path: Path, *, voice: str = "en-gb", words_per_minute: int = 130
) -> Path:
    """Write ``text`` spoken by espeak-ng (22.05 kHz mono WAV) to ``wav_path``.

    The defaults are the most intelligible to tiny.en among espeak's English voices.
    """
    espeak = require_tool("espeak-ng")
    subprocess.run(
        [espeak, "-v", voice, "-s", str(words_per_minute), "-w", str(wav_path), text], check=True
    )
    return wav_path


def run_ffmpeg(*args: str) -> None:
    ffmpeg = require_tool("ffmpeg")
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True
    )


@functools.cache
def whisper_model() -> WhisperModel:
    """The embedded tiny.en, loaded once per test process.

    float32, not int8: CTranslate2's int8 quantises activations per batch, so features that
    differ in the 7th digit (our front end vs faster-whisper's) can flip a decoding choice.
    """
    return load_whisper(cpu_threads=2, compute_type="float32")
