"""Measure a streaming recognizer as if live: real-time factor and caption latency on a
simulated clock (a benchmark helper; ``parley bench asr`` uses it, the product never does)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from media.asr import FeatureTranscriber, Word
from media.features import SAMPLE_RATE, FloatArray, StreamingLogMel
from media.streaming_asr import CaptionEvent, FinalWords, StreamingSettings, StreamingTranscriber

__all__ = ["measure_streaming"]


def _push_at(streamer: StreamingTranscriber, mel: FloatArray, now_s: float) -> list[CaptionEvent]:
    return streamer.push(mel, now_s=now_s)


def _push_and_finish_at(
    streamer: StreamingTranscriber, mel: FloatArray, now_s: float
) -> list[CaptionEvent]:
    return streamer.push(mel, now_s=now_s) + streamer.finish(now_s=now_s)


def measure_streaming(
    transcriber: FeatureTranscriber,
    utterances: Sequence[npt.ArrayLike],
    *,
    settings: StreamingSettings | None = None,
    gap_s: float = 1.0,
    chunk_s: float = 0.1,
    cpu_clock: Callable[[], float] = time.process_time,
    wall_clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Stream ``utterances`` (16 kHz waveforms, ``gap_s`` of silence between) as if live.

    Audio is fed as fast as possible, but latency is computed on a simulated clock: chunk ``i``
    arrives at its audio end time, a push starts when both the chunk has arrived and the
    previous push has returned, and lasts as long as it really took. So decode time counts, and
    a decoder slower than real time falls behind visibly. Returns a JSON-able dict with the
    real-time factor (decode CPU and wall time / audio time), the decode count, the finalized
    text, and the distribution of "utterance end -> all its words final" latency.
    """
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    pieces: list[npt.NDArray[np.float32]] = [gap]
    speech_spans_s: list[tuple[float, float]] = []
    position = gap.shape[0]
    for utterance in utterances:
        samples = np.asarray(utterance, dtype=np.float32)
        pieces.extend([samples, gap])
        speech_spans_s.append((position / SAMPLE_RATE, (position + samples.shape[0]) / SAMPLE_RATE))
        position += samples.shape[0] + gap.shape[0]
    audio = np.concatenate(pieces)
    audio_s = audio.shape[0] / SAMPLE_RATE

    front_end = StreamingLogMel()
    chunk_samples = max(1, round(chunk_s * SAMPLE_RATE))
    sim_now = 0.0
    spent_wall = 0.0
    spent_cpu = 0.0
    finals: list[tuple[Word, float]] = []

    def run(call: Callable[[float], list[CaptionEvent]], arrival_s: float) -> None:
        nonlocal sim_now, spent_wall, spent_cpu
        sim_now = max(sim_now, arrival_s)
        cpu_before, wall_before = cpu_clock(), wall_clock()
        events = call(sim_now)
        spent_cpu += cpu_clock() - cpu_before
        elapsed = wall_clock() - wall_before
        spent_wall += elapsed
        sim_now += elapsed
        for event in events:
            if isinstance(event, FinalWords):
                finals.extend((word, event.committed_at_s) for word in event.words)

    # The transcriber stamps commits with the simulated push start plus the real time elapsed.
    streamer = StreamingTranscriber(transcriber, settings=settings, clock=wall_clock)
    for start in range(0, audio.shape[0], chunk_samples):
        stop = min(start + chunk_samples, audio.shape[0])
        mel = front_end.push(audio[start:stop]).features
        run(functools.partial(_push_at, streamer, mel), stop / SAMPLE_RATE)
    tail = front_end.finish().features
    run(functools.partial(_push_and_finish_at, streamer, tail), audio_s)

    # An utterance is final when the last of its words is: words belong to the utterance whose
    # span (extended to the middle of the gaps around it) holds their start.
    latencies: list[float] = []
    for index, (start_s, end_s) in enumerate(speech_spans_s):
        low = start_s - gap_s / 2 if index else -math.inf
        high = end_s + gap_s / 2
        stamps = [at for word, at in finals if low <= word.start_s < high]
        if stamps:
            latencies.append(max(0.0, max(stamps) - end_s))
    ordered = sorted(latencies)

    def percentile(q: float) -> float | None:
        return float(np.percentile(np.asarray(ordered), q)) if ordered else None

    return {
        "audio_s": audio_s,
        "utterances": len(speech_spans_s),
        "utterances_finalized": len(latencies),
        "final_words": len(finals),
        "final_text": "".join(word.word for word, _ in finals).strip(),
        "decode_count": streamer.decode_count,
        "decode_cpu_s": spent_cpu,
        "decode_wall_s": spent_wall,
        "real_time_factor_cpu": spent_cpu / audio_s,
        "real_time_factor_wall": spent_wall / audio_s,
        "end_of_utterance_to_final_s": {
            "min": percentile(0),
            "median": percentile(50),
            "p90": percentile(90),
            "max": percentile(100),
        },
    }
