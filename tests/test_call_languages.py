"""Calls in every direction among en, pt and es between two real nodes on loopback (issue 13).

The caller reads two everyday sentences in its language (the default voices: piper's "joe" for
English, Kokoro-82M's jm_kumo for Portuguese and Spanish) through its codec (enrolled on joe, like
tests/test_call_e2e.py); the listener's node recognizes them in the declared speaker language on
the model ``models.whisper = auto`` picks (tiny.en for English, the embedded base otherwise),
translates them with the engine or pivot the language matrix chose, and speaks the result.
Oracles: the script (WER of the listener's source-language captions) and the same translator run
again on those captions (the translated track).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import srt
import trio

from daemon.calls import CallModels, CallRequest
from media.captions import Cue, retime_text
from media.errors import UnsupportedLanguageError
from media.features import SAMPLE_RATE
from media.languages import LanguageUnavailableError
from media.models import WhisperChoice
from media.tts import (
    KokoroSynthesizer,
    PiperSynthesizer,
    Synthesizer,
    TtsConfig,
    select_synthesizer,
)
from media.wer import wer
from simulations.bench_call import (
    LEAD_IN_S,
    PAUSE_S,
    TAIL_S,
    call_over_loopback,
    open_call_pair,
    trained_caller_checkpoint,
)
from simulations.node_helpers import short_root
from tests.markers import needs_apertium

pytestmark = [pytest.mark.slow, needs_apertium]

SCRIPTS = {
    "en": ("Could you pass me the salt, please?", "We are leaving for the beach at nine."),
    "pt": ("Você pode me passar o sal, por favor?", "Nós vamos sair para a praia às nove."),
    "es": ("¿Me pasas la sal, por favor?", "Salimos para la playa a las nueve."),
}
#: The issue's bound for every speaker language. (With espeak-ng's Brazilian voice, before
#: Kokoro, a Portuguese speaker had to be held to 0.45: 0.31 even on clean audio.)
WER_BOUND = {"en": 0.3, "es": 0.3, "pt": 0.3}
DIRECTIONS = [("en", "pt"), ("pt", "en"), ("en", "es"), ("es", "en"), ("pt", "es"), ("es", "pt")]


def _voice(language: str) -> Synthesizer:
    synthesizer = select_synthesizer(language, TtsConfig())
    expected = PiperSynthesizer if language == "en" else KokoroSynthesizer
    assert isinstance(synthesizer, expected)
    return synthesizer


def _read(synthesizer: Synthesizer, sentence: str) -> npt.NDArray[np.float32]:
    return synthesizer.synthesize(sentence).at_rate(SAMPLE_RATE).samples


def _script_audio(language: str) -> npt.NDArray[np.float32]:
    synthesizer = _voice(language)
    pieces = [np.zeros(round(LEAD_IN_S * SAMPLE_RATE), dtype=np.float32)]
    for index, sentence in enumerate(SCRIPTS[language]):
        if index:
            pieces.append(np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32))
        pieces.append(_read(synthesizer, sentence))
    pieces.append(np.zeros(round(TAIL_S * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(pieces)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> CallModels:
    # One set of models for the six calls; the multilingual base is assembled once, here.
    return CallModels(cache_dir=tmp_path_factory.mktemp("whisper-cache"))


def _cue_texts(path: Path) -> list[str]:
    return [" ".join(item.content.split()) for item in srt.parse(path.read_text())]


@pytest.mark.parametrize(("source", "target"), DIRECTIONS)
async def test_a_call_in_each_direction(source: str, target: str, models: CallModels) -> None:
    checkpoint = await trio.to_thread.run_sync(trained_caller_checkpoint)
    audio = await trio.to_thread.run_sync(_script_audio, source)
    await trio.to_thread.run_sync(models.prepare, source, target)
    with short_root() as root:
        async with open_call_pair(
            root, caller_checkpoint=checkpoint, models=models, listener_language=target
        ) as pair:
            call = await call_over_loopback(
                pair,
                audio=audio,
                request=CallRequest(speaker_language=source, listener_language=target),
            )
        call_dir = call.record.call_dir
        assert call_dir is not None, call.record.reason
        heard = _cue_texts(call_dir / f"call.{source}.srt")
        assert wer(" ".join(SCRIPTS[source]), " ".join(heard)) <= WER_BOUND[source], heard
        translator = models.translator(source, target)
        as_cues = [
            Cue(
                index=i + 1,
                start_s=c.start.total_seconds(),
                end_s=c.end.total_seconds(),
                lines=tuple(c.content.splitlines()),
            )
            for i, c in enumerate(srt.parse((call_dir / f"call.{source}.srt").read_text()))
        ]
        expected = retime_text(as_cues, translator.translate(heard))
        assert _cue_texts(call_dir / f"call.{target}.srt") == [c.text for c in expected]
        assert (call_dir / f"received.{target}.wav").stat().st_size > SAMPLE_RATE


def test_a_language_no_model_recognizes_is_refused_in_one_line(models: CallModels) -> None:
    # What the listener's node checks before loading anything for a CallStart (calls.py).
    with pytest.raises(LanguageUnavailableError) as info:
        models.check_languages("xx", "pt")
    assert "'xx'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnsupportedLanguageError):
        CallModels(whisper=WhisperChoice("tiny.en")).transcriber("es")
