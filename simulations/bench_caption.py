"""``parley bench caption --json F``: file captioning against faster-whisper, same model, same run.

Recordings: Harvard lists (10 sentences each, 1 s of silence between sentences) read by three
voices (piper's joe, espeak-ng en-us and en-gb), taken round-robin. Two sets, kept apart:

- ``eval`` (the default, what the figures are reported on): the first :data:`EVAL_RECORDINGS`
  (list, voice) pairs, 617 s; ``minutes`` (default 10) takes a shorter prefix of them;
- ``tuning``: the pairs after them (lists 7-10, 366 s), where ``media.caption_file``'s
  windowing is diagnosed and tuned (never on ``eval``).

Four systems on the embedded tiny.en (float32), each timed on every recording in turn (a
``systems`` subset may be asked for when time is short):

- ``parley``: :func:`media.caption_file.caption_recording` as ``parley caption`` runs it
  (silences of 2 s and more skipped, the default);
- ``parley_keep_silence``: the same with ``skip_silence=False`` (``--keep-silence``);
- ``faster_whisper``: ``WhisperModel.transcribe`` with parley's decoding settings (beam 5,
  word timestamps, no conditioning on previous text), all segments consumed;
- ``faster_whisper_vad``: the same with ``vad_filter=True``.

Keys: ``set``, ``audio_s``, ``recordings``, ``voices``, ``model``, ``systems.<name>.{wall_s,
rtf, wer, wer_by_voice}``, and ``goal`` (issue 19: parley at least as accurate as faster-whisper
and at most 1.1x its time; ``rtf_at_most_faster_whisper``: no slower at all). Figures taken on a
shared machine are under load: the JSON says so.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before faster_whisper / piper's onnxruntime)

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np

from media.asr import FeatureTranscriber
from media.audio import load_audio
from media.caption_file import caption_recording
from media.models import load_whisper
from media.translate import Translator
from media.wer import wer
from simulations.bench_asr import synthesize_with_piper
from simulations.corpus import write_float_wav
from simulations.harvard import HARVARD_LISTS

VOICES: Final = ("piper-joe", "espeak-en-us", "espeak-en-gb")
SAMPLE_RATE: Final = 16000
PAUSE_S: Final = 1.0
#: The evaluation set: the first this many (list, voice) pairs; the tuning set is the rest.
EVAL_RECORDINGS: Final = 19
SYSTEMS: Final = ("parley", "parley_keep_silence", "faster_whisper", "faster_whisper_vad")


def _espeak(texts: Sequence[str], voice: str, folder: Path) -> list[np.ndarray]:
    waveforms = []
    for index, text in enumerate(texts):
        path = folder / f"{voice}-{index}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60)
        waveforms.append(load_audio(path))
    return waveforms


def _recording(voice: str, texts: Sequence[str], folder: Path) -> np.ndarray:
    if voice == "piper-joe":
        parts = synthesize_with_piper(texts, folder)
    else:
        parts = _espeak(texts, voice.removeprefix("espeak-"), folder)
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    joined: list[np.ndarray] = []
    for part in parts:
        joined.extend([part, pause])
    return np.concatenate(joined).astype(np.float32)


def _no_translator(source: str, target: str) -> Translator:
    raise AssertionError("the bench asks for no translation")


def run(
    json_path: Path | None = None,
    *,
    minutes: float = 10.0,
    recording_set: str = "eval",
    systems_wanted: Sequence[str] = SYSTEMS,
) -> dict[str, object]:
    if recording_set not in ("eval", "tuning"):
        raise ValueError(f"recording_set must be eval or tuning, got {recording_set!r}")
    unknown = set(systems_wanted) - set(SYSTEMS)
    if unknown or not {"parley", "faster_whisper"} <= set(systems_wanted):
        raise ValueError(f"systems must include parley and faster_whisper, from {SYSTEMS}")
    model = load_whisper()
    transcriber = FeatureTranscriber(model)
    with tempfile.TemporaryDirectory(prefix="parley-bench-caption-") as temporary:
        folder = Path(temporary)
        recordings: list[tuple[str, str, Path]] = []  # voice, reference, file
        audio_s = 0.0
        pairs = [(lists, voice) for lists in HARVARD_LISTS for voice in VOICES]
        pairs = pairs[:EVAL_RECORDINGS] if recording_set == "eval" else pairs[EVAL_RECORDINGS:]
        for number, (sentences, voice) in enumerate(pairs):
            if audio_s >= minutes * 60:
                break
            audio = _recording(voice, sentences, folder)
            path = folder / f"recording{number}.wav"
            write_float_wav(path, audio, SAMPLE_RATE)
            recordings.append((voice, " ".join(sentences), path))
            audio_s += len(audio) / SAMPLE_RATE

        def parley(skip_silence: bool) -> Callable[[Path], str]:
            def caption(path: Path) -> str:
                result = caption_recording(
                    path,
                    out_dir=folder / "out",
                    transcriber=transcriber,
                    translator_factory=_no_translator,
                    skip_silence=skip_silence,
                )
                return " ".join(cue.text for cue in result.tracks[result.language])

            return caption

        def faster_whisper(vad: bool) -> Callable[[Path], str]:
            def transcribe(path: Path) -> str:
                segments, _info = model.transcribe(
                    load_audio(path),
                    language="en",
                    beam_size=5,
                    word_timestamps=True,
                    condition_on_previous_text=False,
                    vad_filter=vad,
                )
                return " ".join(segment.text.strip() for segment in segments)

            return transcribe

        every_system = {
            "parley": parley(True),
            "parley_keep_silence": parley(False),
            "faster_whisper": faster_whisper(False),
            "faster_whisper_vad": faster_whisper(True),
        }
        systems = {name: every_system[name] for name in SYSTEMS if name in systems_wanted}
        parley(True)(recordings[0][2])  # warm-up, not timed
        walls = dict.fromkeys(systems, 0.0)
        heard: dict[str, list[str]] = {name: [] for name in systems}
        for _voice, _reference, path in recordings:
            for name, system in systems.items():
                start = time.perf_counter()
                heard[name].append(system(path))
                walls[name] += time.perf_counter() - start

    references = [reference for _voice, reference, _path in recordings]
    report_systems: dict[str, object] = {}
    voices = [voice for voice, _r, _p in recordings]
    for name in systems:
        by_voice = {
            voice: round(
                wer(
                    " ".join(r for v, r in zip(voices, references, strict=True) if v == voice),
                    " ".join(h for v, h in zip(voices, heard[name], strict=True) if v == voice),
                ),
                4,
            )
            for voice in dict.fromkeys(voices)
        }
        report_systems[name] = {
            "wall_s": round(walls[name], 2),
            "rtf": round(walls[name] / audio_s, 4),
            "wer": round(wer(" ".join(references), " ".join(heard[name])), 4),
            "wer_by_voice": by_voice,
        }
    parley_wer = wer(" ".join(references), " ".join(heard["parley"]))
    reference_wer = wer(" ".join(references), " ".join(heard["faster_whisper"]))
    report: dict[str, object] = {
        "set": recording_set,
        "audio_s": round(audio_s, 1),
        "recordings": len(recordings),
        "voices": sorted({voice for voice, _r, _p in recordings}),
        "model": "tiny.en float32",
        "systems": report_systems,
        "goal": {
            "at_least_as_accurate": parley_wer <= reference_wer,
            "time_ratio": round(walls["parley"] / walls["faster_whisper"], 3),
            "at_most_1_1x_time": walls["parley"] <= 1.1 * walls["faster_whisper"],
            "rtf_at_most_faster_whisper": walls["parley"] <= walls["faster_whisper"],
        },
        "measured_under_load": "a shared machine: other processes ran during the measure",
    }
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--set", dest="recording_set", choices=("eval", "tuning"), default="eval")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    arguments = parser.parse_args(argv)
    report = run(
        arguments.json,
        minutes=arguments.minutes,
        recording_set=arguments.recording_set,
        systems_wanted=arguments.systems.split(","),
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
