"""Kokoro-82M, the Portuguese and Spanish voice (media/kokoro.py): model assembly, phonemes,
synthesis heard back by Whisper base, voice traits, and how a language picks it."""

from __future__ import annotations

import common.offline  # noqa: F401  # before faster_whisper

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.errors import ModelNotFoundError
from media.kokoro import (
    KOKORO_MODEL_BYTES,
    KOKORO_MODEL_PACKAGES,
    KOKORO_MODEL_SHA256,
    MAX_CHUNK_TOKENS,
    KokoroIntegrityError,
    assemble_kokoro,
    chunks,
    clauses,
    load_kokoro,
    phonemize,
)
from media.models import assemble_base
from media.tts import (
    EspeakSynthesizer,
    KokoroSynthesizer,
    PiperSynthesizer,
    TtsConfig,
    select_synthesizer,
)
from media.wer import corpus_wer
from schemas.messages import VoiceTraits
from tests.test_voice import yin_median_hz

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="Debian package espeak-ng is not installed"
)

# Written for this test (neither the bench's evaluation set nor the route-choice set the
# speaker was chosen on).
SCRIPTS = {
    "pt": (
        "A padaria abre às sete horas da manhã.",
        "O meu vizinho tem dois gatos pretos.",
    ),
    "es": (
        "La panadería abre a las siete de la mañana.",
        "Mi vecino tiene dos gatos negros.",
    ),
}


# -- the model from the four packages --------------------------------------------------------


def test_the_installed_parts_join_to_the_published_model(tmp_path: Path) -> None:
    model = assemble_kokoro(tmp_path / "cache")
    assert model.stat().st_size == KOKORO_MODEL_BYTES
    assert hashlib.sha256(model.read_bytes()).hexdigest() == KOKORO_MODEL_SHA256
    assert model.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in model.parent.iterdir()] == [model.name]  # no leftovers


def test_a_damaged_part_is_refused_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    payload = b"kokoro stand-in model bytes"
    parts = []
    for index, piece in enumerate((payload[:9], payload[9:])):
        parts.append(tmp_path / f"part{index}.bin")
        parts[-1].write_bytes(piece)
    good = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"
    made = assemble_kokoro(cache, parts=parts, expected_bytes=len(payload), expected_sha256=good)
    assert made.read_bytes() == payload
    # Trusted once in place: a second call does not read the parts again.
    parts[0].unlink()
    assert (
        assemble_kokoro(cache, parts=parts, expected_bytes=len(payload), expected_sha256=good)
        == made
    )

    parts[0].write_bytes(b"KOKORO ST")  # same size, other bytes
    other = tmp_path / "other"
    with pytest.raises(KokoroIntegrityError) as info:
        assemble_kokoro(other, parts=parts, expected_bytes=len(payload), expected_sha256=good)
    message = str(info.value)
    assert "\n" not in message
    assert KOKORO_MODEL_PACKAGES[0][0] in message and KOKORO_MODEL_PACKAGES[-1][0] in message
    assert list(other.iterdir()) == []
    with pytest.raises(KokoroIntegrityError, match="joined size"):
        assemble_kokoro(other, parts=parts[:1], expected_bytes=len(payload), expected_sha256=good)
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        assemble_kokoro(other, parts=[tmp_path / "nope.bin"])


# -- phonemes --------------------------------------------------------------------------------


def test_clauses_keep_their_punctuation_and_drop_opening_marks() -> None:
    found = [(c.text, c.mark) for c in clauses("¡Hola, Ana! ¿Qué tal… estás? Bien")]
    assert found == [("Hola", ","), ("Ana", "!"), ("Qué tal", "."), ("estás", "?"), ("Bien", "")]


def test_phonemes_are_espeak_ngs_with_kokoros_symbols() -> None:
    # Oracle: espeak-ng itself, asked for the same clause with a tie character.
    raw = subprocess.run(
        ["espeak-ng", "-q", "--ipa", "--tie=^", "-v", "es"],
        input=b"el chico",
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "t^ʃ" in raw
    (ours,) = phonemize("El chico.", voice="es")
    assert ours == raw.strip().replace("t^ʃ", "ʧ") + "."
    assert len(phonemize("-v help, me", voice="es")) == 2  # text is never taken for an option


def test_long_text_is_cut_into_runs_the_model_takes() -> None:
    model = load_kokoro()
    text = " ".join(["Eu moro numa casa pequena perto do rio, com os meus pais e irmãos."] * 6)
    runs = chunks(model, phonemize(text, voice="pt-br"))
    assert len(runs) > 1
    assert all(0 < len(run) <= MAX_CHUNK_TOKENS for run in runs)
    every = [token for clause in phonemize(text, voice="pt-br") for token in model.tokens(clause)]
    space = model.vocab[" "]
    assert [t for run in runs for t in run if t != space] == [t for t in every if t != space]


# -- synthesis, heard back -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from faster_whisper import WhisperModel

    folder = assemble_base(tmp_path_factory.mktemp("whisper-cache"))
    return WhisperModel(
        str(folder), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True
    )


@pytest.mark.parametrize("language", ["pt", "es"])
def test_the_default_voice_is_heard_and_identified_by_whisper_base(
    language: str, base: Any
) -> None:
    synthesizer = select_synthesizer(language, TtsConfig())
    assert isinstance(synthesizer, KokoroSynthesizer) and synthesizer.voice_name == "jm_kumo"
    # One recording of both sentences, as the bench reads them: identification is asked of
    # recordings of about five seconds (a single three-second sentence can pass for Italian).
    pause = np.zeros(6_400, dtype=np.float32)
    pieces = [synthesizer.synthesize(text).at_rate(16_000).samples for text in SCRIPTS[language]]
    audio = np.concatenate([pause, pieces[0], pause, pieces[1], pause])
    assert audio.size >= 4.5 * 16_000
    segments, info = base.transcribe(audio, beam_size=1, condition_on_previous_text=False)
    assert info.language == language, (info.language, info.language_probability)
    heard = " ".join(s.text for s in segments)
    assert corpus_wer([(" ".join(SCRIPTS[language]), heard)]) <= 0.2, heard


def test_kokoro_applies_pitch_and_rate() -> None:
    synthesizer = select_synthesizer("es", TtsConfig())
    assert isinstance(synthesizer, KokoroSynthesizer)
    own = synthesizer.own_voice
    text = SCRIPTS["es"][0]
    neutral = synthesizer.synthesize(text)
    shifted = synthesizer.synthesize(
        text,
        voice=VoiceTraits(
            median_pitch_hz=own.median_pitch_hz * 1.3,
            speaking_rate_wps=own.speaking_rate_wps * 0.8,
        ),
    )
    ratio = yin_median_hz(shifted.at_rate(16_000).samples, 16_000) / yin_median_hz(
        neutral.at_rate(16_000).samples, 16_000
    )
    assert ratio == pytest.approx(1.3, rel=0.1)
    assert shifted.duration_s / neutral.duration_s == pytest.approx(1 / 0.8, rel=0.15)
    assert np.isfinite(shifted.samples).all()


# -- which engine serves a language ----------------------------------------------------------


def test_languages_pick_their_engine_and_refusals_are_one_line(tmp_path: Path) -> None:
    assert isinstance(select_synthesizer("en", TtsConfig()), PiperSynthesizer)
    assert isinstance(select_synthesizer("pt-BR", TtsConfig()), KokoroSynthesizer)
    assert isinstance(select_synthesizer("de", TtsConfig()), EspeakSynthesizer)
    espeak_only = TtsConfig(backend="espeak-ng")
    assert isinstance(select_synthesizer("es", espeak_only), EspeakSynthesizer)
    with pytest.raises(ModelNotFoundError, match="no Kokoro voice for 'de'") as info:
        select_synthesizer("de", TtsConfig(backend="kokoro"))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="no speaker 'af_heart'"):
        select_synthesizer("pt", TtsConfig(kokoro_voices=(("pt", "af_heart"),)))
    with pytest.raises(ModelNotFoundError, match="apt-get install espeak-ng"):
        select_synthesizer("es", TtsConfig(espeak_binary=str(tmp_path / "espeak-ng")))
