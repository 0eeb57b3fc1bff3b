"""``parley caption`` on Portuguese and Spanish speech: the language is identified, the tracks are
named after it, and the translated track is the translation engine's output for the source cues.

The speech is the default voice for each language (Kokoro-82M's jm_kumo, media/kokoro.py); the
oracles are the script (WER of the source track), the translator run again on the source cues,
and ``srt``'s parser.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import srt
from typer.testing import CliRunner

from daemon.cli import UserError, app
from media.captions import CaptionLayout, Cue, retime_text
from media.translate import TranslationConfig, select_translator
from media.tts import Speech, TtsConfig, select_synthesizer
from media.wer import wer
from tests.markers import needs_apertium

pytestmark = [pytest.mark.slow, needs_apertium]

#: The figures per voice are in `parley bench languages` (asr.<lang>.wer); with espeak-ng's
#: voices, before Kokoro, these bounds had to be 0.75 (pt) and 0.6 (es).
WER_BOUND = {"pt": 0.3, "es": 0.3}
SCRIPTS = {
    "pt": "Amanhã eu vou visitar a minha avó no interior. Ela mora numa casa amarela.",
    "es": "Mañana voy a visitar a mi abuela en el campo. Ella vive en una casa amarilla.",
}


def _write_wav(path: Path, speech: Speech) -> None:
    pcm = np.round(np.clip(speech.samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(speech.sample_rate)
        out.writeframes(pcm.tobytes())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One home for both runs: the multilingual model is assembled into it once.
    return tmp_path_factory.mktemp("caption-languages") / "home"


def _cues(path: Path) -> list[srt.Subtitle]:
    return list(srt.parse(path.read_text(encoding="utf-8")))


# Both languages are identified on the recording (with espeak-ng's voices Whisper base heard
# Portuguese as Thai or Italian; Kokoro's is heard as Portuguese). --language is tested too.
@pytest.mark.parametrize(
    ("language", "target", "identify"),
    [("pt", "en", True), ("es", "pt", True), ("pt", "es", False)],
)
def test_caption_writes_the_spoken_language_and_a_translation(
    language: str, target: str, identify: bool, home: Path, tmp_path: Path
) -> None:
    script = SCRIPTS[language]
    recording = tmp_path / "visita.wav"
    _write_wav(recording, select_synthesizer(language, TtsConfig()).synthesize(script))
    out = tmp_path / "out"
    forced = [] if identify else ["--language", language]
    result = CliRunner().invoke(
        app,
        [
            "caption",
            str(recording),
            "--local",
            "--to",
            target,
            *forced,
            "--home",
            str(home),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.exception
    how = "(identified, probability" if identify else "(as given)"
    assert f"cues in {language} {how}" in result.output
    source_path, target_path = out / f"visita.{language}.srt", out / f"visita.{target}.srt"
    assert sorted(result.stdout.split()) == sorted(
        str(out / f"visita.{lang}.{ext}") for lang in (language, target) for ext in ("srt", "vtt")
    )
    source_cues = _cues(source_path)
    heard = " ".join(cue.content.replace("\n", " ") for cue in source_cues)
    assert wer(script, heard) <= WER_BOUND[language], heard
    # The translated track is the engine's translation of the source cues, on their timing.
    cues = [
        Cue(
            index=cue.index,
            start_s=cue.start.total_seconds(),
            end_s=cue.end.total_seconds(),
            lines=tuple(cue.content.split("\n")),
        )
        for cue in source_cues
    ]
    translator = select_translator(language, target, TranslationConfig())
    expected = retime_text(
        cues, translator.translate([c.text for c in cues]), layout=CaptionLayout()
    )
    got = _cues(target_path)
    assert [c.content.split("\n") for c in got] == [list(c.lines) for c in expected]


def test_a_forced_language_no_model_recognizes_is_one_line(home: Path, tmp_path: Path) -> None:
    recording = tmp_path / "x.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(recording), "hola"], check=True, timeout=60)
    result = CliRunner().invoke(
        app, ["caption", str(recording), "--local", "--language", "xx", "--home", str(home)]
    )
    assert isinstance(result.exception, UserError)
    assert "cannot recognize speech in 'xx'" in str(result.exception)
    assert "\n" not in str(result.exception)
