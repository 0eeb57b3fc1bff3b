"""``models.tts`` chooses the voice calls speak with (the load trial relies on it)."""

from __future__ import annotations

import shutil

import pytest

from daemon.call_models import CallModels
from daemon.config import InvalidSetting, config_from_mapping
from media.tts import EspeakSynthesizer, PiperSynthesizer

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@needs_espeak
def test_models_tts_espeak_makes_every_language_speak_with_espeak() -> None:
    config = config_from_mapping({"models": {"tts": "espeak-ng"}})
    models = CallModels.from_config(config)
    assert isinstance(models.synthesizer("pt"), EspeakSynthesizer)
    assert isinstance(models.synthesizer("en"), EspeakSynthesizer)


def test_models_tts_auto_keeps_piper_for_english() -> None:
    models = CallModels.from_config(config_from_mapping({}))
    assert isinstance(models.synthesizer("en"), PiperSynthesizer)


def test_an_unknown_voice_engine_is_one_config_error() -> None:
    with pytest.raises(InvalidSetting, match=r"models\.tts: must be one of"):
        config_from_mapping({"models": {"tts": "festival"}})
