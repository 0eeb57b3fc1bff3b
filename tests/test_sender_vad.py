"""The sender's Silero VAD (faster-whisper's ONNX model), run live, and the speech marks it puts
on ``CodecFrames``. Oracles: faster-whisper's own batch ``SileroVADModel`` on the same audio,
and the known layout of the test signal (where the synthesized speech is)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.vad import SileroVADModel

from codec.config import CodecConfig
from codec.model import new_model
from media.audio import load_audio
from media.call_sender import CallSender
from media.features import SAMPLE_RATE
from media.sender_vad import (
    WINDOW_SAMPLES,
    SenderVadError,
    SenderVadSettings,
    SileroStreamingVad,
    SpeechEdge,
    load_silero_session,
    silero_model_path,
)
from schemas.codec import decode, encode
from schemas.messages import CodecFrames

LEAD_S = 1.0
TAIL_S = 1.5


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are Debian packages of the Makefile")
    folder = tmp_path_factory.mktemp("vad")
    raw, converted = folder / "raw.wav", folder / "speech.wav"
    text = "The boy was there when the sun rose."
    subprocess.run(["espeak-ng", "-w", str(raw), "--", text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(converted)],
        check=True,
        capture_output=True,
    )
    return load_audio(converted)


def _layout(speech: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Lead silence, speech, tail silence (with a little noise); speech start/end in s."""
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    start_s = LEAD_S + loud[0] / SAMPLE_RATE
    end_s = LEAD_S + (loud[-1] + 1) / SAMPLE_RATE
    signal = np.concatenate(
        [np.zeros(round(LEAD_S * SAMPLE_RATE)), speech, np.zeros(round(TAIL_S * SAMPLE_RATE))]
    ).astype(np.float32)
    rng = np.random.default_rng(7)
    signal += rng.normal(0.0, 1e-3, signal.shape).astype(np.float32)
    return signal, start_s, end_s


def test_live_probabilities_equal_faster_whispers_batch_run(speech: np.ndarray) -> None:
    signal, _, _ = _layout(speech)
    signal = signal[: signal.shape[0] // WINDOW_SAMPLES * WINDOW_SAMPLES]
    batch = SileroVADModel(str(silero_model_path()))(signal).reshape(-1)
    vad = SileroStreamingVad(load_silero_session())
    # Odd chunk sizes: windows straddle pushes.
    for start in range(0, signal.shape[0], 1000):
        vad.push(signal[start : start + 1000])
    live = np.asarray(vad.probabilities())
    assert live.shape == batch.shape
    np.testing.assert_allclose(live, batch, atol=1e-5)


def test_speech_edges_fall_at_the_speech(speech: np.ndarray) -> None:
    signal, start_s, end_s = _layout(speech)
    vad = SileroStreamingVad(load_silero_session(), SenderVadSettings(min_silence_s=0.3))
    events = []
    for start in range(0, signal.shape[0], 1600):
        events += vad.push(signal[start : start + 1600])
    starts = [e.sample / SAMPLE_RATE for e in events if e.edge is SpeechEdge.START]
    ends = [e.sample / SAMPLE_RATE for e in events if e.edge is SpeechEdge.END]
    assert len(starts) >= 1 and len(ends) == len(starts)
    assert abs(starts[0] - start_s) <= 0.15
    assert abs(ends[-1] - end_s) <= 0.4
    assert not vad.in_speech


def test_sender_marks_the_talkspurt_around_the_speech(speech: np.ndarray) -> None:
    signal, start_s, end_s = _layout(speech)
    model = new_model(CodecConfig())
    plain = CallSender(model)
    marked = CallSender(model, vad=SileroStreamingVad(load_silero_session()))
    plain_messages: list[CodecFrames] = []
    marked_messages: list[CodecFrames] = []
    for start in range(0, signal.shape[0], 1600):
        plain_messages += plain.push(signal[start : start + 1600])
        marked_messages += marked.push(signal[start : start + 1600])
    plain_messages += plain.finish()
    marked_messages += marked.finish()
    assert not any(m.speech_start or m.speech_end for m in plain_messages)
    rate = model.config.frame_rate_hz
    assert sum(m.frame_count for m in plain_messages) == pytest.approx(
        signal.shape[0] / SAMPLE_RATE * rate, abs=1
    )
    starts = [m.start_time_s for m in marked_messages if m.speech_start]
    ends = [m.start_time_s + m.frame_count / rate for m in marked_messages if m.speech_end]
    assert len(starts) == len(ends) == 1
    # The talkspurt opens a pre-roll before the speech and closes after the VAD's quiet that
    # ended it (min_silence_s).
    assert start_s - 0.5 <= starts[0] <= start_s
    assert end_s <= ends[0] <= end_s + 0.7


def test_speech_marks_cross_the_wire() -> None:
    message = CodecFrames(3, 1.5, 2, b"\x01\x02", speech_start=True, speech_end=True)
    assert decode(encode(message)) == message
    old_style = CodecFrames(4, 1.6, 1, b"\x03")
    assert decode(encode(old_style)) == old_style


def test_settings_are_checked_and_a_missing_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SenderVadSettings(threshold=0.1)
    with pytest.raises(ValueError):
        SenderVadSettings(min_silence_s=-1.0)
    with pytest.raises(SenderVadError) as caught:
        load_silero_session(tmp_path / "missing.onnx")
    assert "\n" not in str(caught.value)
