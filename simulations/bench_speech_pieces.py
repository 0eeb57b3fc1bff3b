"""``parley bench speech-pieces``: a cue's speech synthesized whole vs in pieces (issue 14).

For each line of ``simulations/eval_sets/speech_pieces_eval.json`` (evaluation material written
for this bench; the piece budgets of :mod:`media.speech_pieces` were not tuned on it), in the
language of the synthesizer a call uses for it (Kokoro for pt, piper for en, as ``models.tts =
auto`` picks them), with a caller's voice traits:

* **whole**: one ``synthesize`` of the line (what a listener did before speech in pieces);
* **pieces**: ``split_for_speech`` then one ``synthesize`` per piece, in order.

Figures per language: time to the first audio (``first_audio_cpu_s``: this process's CPU
seconds plus its children's, e.g. espeak-ng, until the first piece exists; ``first_audio_wall_s``
the same in wall time, which depends on the box's load), total CPU seconds, audio seconds, and
the WER Whisper reads from each (tiny.en for en, base for pt, as in a call; the pieces joined
back to back, as the playout plays them) against the line.
CPU seconds are what this bench is for: the box is shared.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before the model imports)

import json
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from daemon.call_models import CallModels
from media.features import SAMPLE_RATE
from media.speech_pieces import split_for_speech
from media.tts import Speech, Synthesizer
from media.wer import wer
from schemas.messages import VoiceTraits
from simulations.corpus import default_cache_dir

EVAL_SET: Final = Path(__file__).parent / "eval_sets" / "speech_pieces_eval.json"
#: A caller's voice (the listener always synthesizes with one in a call).
VOICE: Final = VoiceTraits(median_pitch_hz=118.0, speaking_rate_wps=2.6)


def _cpu_s() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _measure(synthesizer: Synthesizer, texts: Sequence[str]) -> dict[str, Any]:
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    first: tuple[float, float] | None = None
    audio: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    rate = 0
    for text in texts:
        speech = synthesizer.synthesize(text, voice=VOICE)
        if first is None:
            first = (_cpu_s() - cpu0, time.perf_counter() - wall0)
        audio.append(speech.samples)
        rate = speech.sample_rate
    assert first is not None
    joined = Speech(np.concatenate(audio).astype(np.float32), rate)
    return {
        "first_audio_cpu_s": first[0],
        "first_audio_wall_s": first[1],
        "cpu_s": _cpu_s() - cpu0,
        "audio_s": joined.duration_s,
        "speech": joined,
        "pieces": len(texts),
    }


def _summary(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


def run(json_path: Path | None = None, *, cache_dir: Path | None = None) -> dict[str, Any]:
    material = json.loads(EVAL_SET.read_text(encoding="utf-8"))
    # The Whisper base and Kokoro models are joined beside the other benches' caches.
    home_models = cache_dir if cache_dir is not None else default_cache_dir().parent / "models"
    models = CallModels(cache_dir=home_models)
    report: dict[str, Any] = {"material": material["name"]}
    for language in ("pt", "en"):
        synthesizer = models.synthesizer(language)  # loaded and calibrated, as in a call
        reader = models.transcriber(language)  # as a call hears it: tiny.en, base for pt
        rows: dict[str, list[dict[str, Any]]] = {"whole": [], "pieces": []}
        heard: dict[str, list[str]] = {"whole": [], "pieces": []}
        for line in material[language]:
            for mode, texts in (("whole", [line]), ("pieces", split_for_speech(line))):
                row = _measure(synthesizer, texts)
                speech: Speech = row.pop("speech")
                heard[mode].append(
                    reader.transcribe_audio(speech.at_rate(SAMPLE_RATE).samples).text
                )
                rows[mode].append(row)
        lines = " ".join(material[language])
        report[language] = {
            "synthesizer": type(synthesizer).__name__,
            "lines": len(material[language]),
            **{
                mode: {
                    "first_audio_cpu_s_p50": _summary(rows[mode], "first_audio_cpu_s"),
                    "first_audio_wall_s_p50": _summary(rows[mode], "first_audio_wall_s"),
                    "cpu_s_total": sum(r["cpu_s"] for r in rows[mode]),
                    "audio_s_total": sum(r["audio_s"] for r in rows[mode]),
                    "pieces_total": sum(r["pieces"] for r in rows[mode]),
                    "wer": wer(lines, " ".join(heard[mode])),
                    "heard": heard[mode],
                    "per_line": rows[mode],
                }
                for mode in ("whole", "pieces")
            },
        }
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args.json, cache_dir=args.cache_dir)
    for language in ("pt", "en"):
        for mode in ("whole", "pieces"):
            entry = report[language][mode]
            print(
                language, mode, {k: v for k, v in entry.items() if k not in ("per_line", "heard")}
            )


if __name__ == "__main__":
    main()
