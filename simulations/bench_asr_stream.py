"""``parley bench asr-stream``: live captions against offline ones, on speech never tuned on.

Theory of operation
-------------------
1. **The set.** A JSON data file (default :data:`EVAL_SET`, ``simulations/eval_sets/``) names
   the sentences and the voices: each voice reads its own run of ``sentences_per_voice``
   sentences (voice ``i`` starts at sentence ``i * sentences_per_voice``, wrapping around), with
   the pauses of ``pauses_s`` (cycled) between them, as one recording. The evaluation set is
   never used by a test or to choose a default; the tuning set (``simulations/tuning_sets/``)
   has other sentences and other voices and is what diagnosis and tests may look at. The JSON
   says which set was used.
2. **Streaming, as a call does it.** The recording goes through the caller's half of a call
   (:class:`~media.call_sender.CallSender`: streaming log-mel, the shipped default codec,
   ``CodecFrames`` every 100 ms of audio) and the listener's half
   (:class:`~media.call_receiver.FrameIntake`, :class:`~media.call_receiver.TalkspurtDecoder`,
   then the call's :class:`~media.streaming_asr.StreamingTranscriber` with the call's Whisper
   settings: :class:`~daemon.calls.CallModels`). With DTX (the default, as calls between our
   nodes do; ``--no-dtx`` sends every frame) the sender's Silero VAD sends talkspurts only
   and marks their ends. Caption latency runs on a simulated clock, as
   :func:`~simulations.streaming_measure.measure_streaming` does: chunk ``k`` arrives at its
   audio end time, a push starts when the chunk is here and the previous push is done, and
   lasts as long as it really took (under load, that includes waiting for a core).
3. **Offline.** The same recording, as a WAV file, through
   :func:`~media.caption_file.caption_recording` with ``parley caption --local``'s transcriber.
4. **Figures.** Corpus WER of both against the script; ``dropped_utterances``: reference
   sentences with no streaming caption word overlapping their time span; ``compute_ratio``:
   the process CPU seconds of the streaming recognizer's pushes over those of the offline
   transcription of the same audio (process CPU time counts CTranslate2's threads and nothing
   that other processes on the machine do); latency percentiles of "end of a sentence's audio ->
   its last word final".
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before faster_whisper)

import argparse
import json
import math
import re
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from media.features import FRAMES_PER_SECOND, SAMPLE_RATE
from media.wer import corpus_wer
from simulations.corpus import CorpusError, VoiceEngine, VoiceSpec, default_cache_dir
from simulations.report import print_report, write_report

SETS_DIR: Final = Path(__file__).resolve().parent
EVAL_SET: Final = SETS_DIR / "eval_sets" / "asr_stream_eval.json"
TUNING_SET: Final = SETS_DIR / "tuning_sets" / "asr_stream_tuning.json"
LEAD_IN_S: Final = 0.5
TAIL_S: Final = 1.5
CHUNK_S: Final = 0.1
#: A caption word belongs to a sentence when it overlaps the sentence's audio widened by this.
OVERLAP_SLACK_S: Final = 0.1
MAX_SET_BYTES: Final = 1 << 20


class EvalSetError(ValueError):
    """The set file is missing, not JSON, or does not describe a set."""


@dataclass(frozen=True, kw_only=True)
class SpeechSet:
    name: str
    purpose: str
    sentences: tuple[str, ...]
    voices: tuple[VoiceSpec, ...]
    sentences_per_voice: int
    pauses_s: tuple[float, ...]

    def script(self, voice_index: int) -> tuple[str, ...]:
        first = voice_index * self.sentences_per_voice
        count = len(self.sentences)
        return tuple(self.sentences[(first + k) % count] for k in range(self.sentences_per_voice))

    def pause_s(self, voice_index: int, gap_index: int) -> float:
        return self.pauses_s[(voice_index + gap_index) % len(self.pauses_s)]


def load_speech_set(path: Path) -> SpeechSet:
    """Read and validate a set file; every problem is a one-line :class:`EvalSetError`."""
    try:
        raw = Path(path).read_bytes()[: MAX_SET_BYTES + 1]
        if len(raw) > MAX_SET_BYTES:
            raise EvalSetError(f"{path}: larger than {MAX_SET_BYTES} bytes")
        data = json.loads(raw)
    except OSError as error:
        raise EvalSetError(f"cannot read {path}: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalSetError(f"{path} is not JSON: {error}") from error
    try:
        voices = tuple(
            VoiceSpec(
                id=str(entry["id"]),
                engine=VoiceEngine(entry["engine"]),
                voice=str(entry["voice"]),
                pitch=entry.get("pitch"),
                words_per_minute=entry.get("words_per_minute"),
                length_scale=entry.get("length_scale"),
            )
            for entry in data["voices"]
        )
        speech_set = SpeechSet(
            name=str(data["name"]),
            purpose=str(data.get("purpose", "")),
            sentences=tuple(str(text) for text in data["sentences"]),
            voices=voices,
            sentences_per_voice=int(data["sentences_per_voice"]),
            pauses_s=tuple(float(value) for value in data["pauses_s"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError, CorpusError) as error:
        raise EvalSetError(f"{path} does not describe a speech set: {error}") from error
    if not speech_set.sentences or not speech_set.voices or not speech_set.pauses_s:
        raise EvalSetError(f"{path}: sentences, voices and pauses_s must not be empty")
    if speech_set.sentences_per_voice < 1:
        raise EvalSetError(f"{path}: sentences_per_voice must be at least 1")
    if not all(math.isfinite(p) and 0.0 < p <= 10.0 for p in speech_set.pauses_s):
        raise EvalSetError(f"{path}: pauses must be in (0, 10] s")
    return speech_set


@dataclass(frozen=True)
class Recording:
    """One voice reading its script: 16 kHz audio and where each sentence is."""

    voice_id: str
    audio: npt.NDArray[np.float32]
    texts: tuple[str, ...]
    spans_s: tuple[tuple[float, float], ...]

    @property
    def audio_s(self) -> float:
        return int(self.audio.shape[0]) / SAMPLE_RATE


def build_recordings(
    speech_set: SpeechSet, cache_dir: Path, *, voices: Sequence[str] = ()
) -> list[Recording]:
    """Synthesize (or reuse) each voice's sentences and lay them out with the set's pauses."""
    from media.audio import load_audio
    from simulations.corpus import synthesize_texts

    recordings = []
    for index, spec in enumerate(speech_set.voices):
        if voices and spec.id not in voices:
            continue
        texts = speech_set.script(index)
        utterances = synthesize_texts(cache_dir, spec, texts)
        pieces = [np.zeros(round(LEAD_IN_S * SAMPLE_RATE), dtype=np.float32)]
        position = pieces[0].shape[0]
        spans = []
        for k, utterance in enumerate(utterances):
            if k:
                pause = np.zeros(round(speech_set.pause_s(index, k - 1) * SAMPLE_RATE), np.float32)
                pieces.append(pause)
                position += pause.shape[0]
            samples = load_audio(utterance.wav_path)
            start, end = _speech_bounds(samples)
            spans.append(((position + start) / SAMPLE_RATE, (position + end) / SAMPLE_RATE))
            pieces.append(samples)
            position += samples.shape[0]
        pieces.append(np.zeros(round(TAIL_S * SAMPLE_RATE), dtype=np.float32))
        recordings.append(
            Recording(
                voice_id=spec.id,
                audio=np.concatenate(pieces),
                texts=texts,
                spans_s=tuple(spans),
            )
        )
    return recordings


def _speech_bounds(samples: npt.NDArray[np.float32]) -> tuple[int, int]:
    """First and last sample above -50 dBFS: synthesizers pad their output with silence."""
    loud = np.flatnonzero(np.abs(samples) > 10 ** (-50 / 20))
    if loud.size == 0:
        return 0, samples.shape[0]
    return int(loud[0]), int(loud[-1]) + 1


# -- the streaming path -----------------------------------------------------------------------


@dataclass
class StreamRun:
    words: list[tuple[str, float, float, float]] = field(default_factory=list)
    #: For each word, when it was final on a clock where a push lasts its CPU time (no load).
    cpu_clock_commits: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    decode_count: int = 0
    frames_sent: int = 0


def stream_recording(
    recording: Recording,
    *,
    codec: Any,
    transcriber: Any,
    settings: Any,
    dtx: bool = True,
    vad_settings: Any = None,
    cpu_clock: Callable[[], float] = time.process_time,
    wall_clock: Callable[[], float] = time.perf_counter,
) -> StreamRun:
    """The recording through a call's sender, codec and streaming recognizer (module doc)."""
    from media.call_receiver import (
        CallLimits,
        FrameIntake,
        TalkspurtDecoder,
        TimelinePiece,
        feed_transcriber,
    )
    from media.call_sender import CallSender, codec_settings
    from media.sender_vad import SileroStreamingVad, load_silero_session
    from media.streaming_asr import CaptionEvent, FinalWords, StreamingTranscriber
    from schemas.messages import CallStart, VoiceTraits

    vad = SileroStreamingVad(load_silero_session(), vad_settings) if dtx else None
    sender = CallSender(codec, vad=vad)
    start = CallStart(0, "en", "en", codec_settings(codec, b"\0" * 32), VoiceTraits(100.0, 2.5))
    intake = FrameIntake(start, CallLimits())
    decoder = TalkspurtDecoder(codec)
    streamer = StreamingTranscriber(transcriber, settings=settings, clock=wall_clock)
    result = StreamRun()
    sim_now = 0.0
    cpu_now = 0.0

    def recognize(pieces: Sequence[TimelinePiece], arrival_s: float, *, finish: bool) -> None:
        nonlocal sim_now, cpu_now
        sim_now = max(sim_now, arrival_s)
        cpu_now = max(cpu_now, arrival_s)
        cpu_before, wall_before = cpu_clock(), wall_clock()

        def now() -> float:
            return sim_now + wall_clock() - wall_before

        events: list[CaptionEvent] = feed_transcriber(streamer, pieces, clock=now).events
        if finish:
            events += streamer.finish(now_s=now())
        spent_cpu = cpu_clock() - cpu_before
        result.cpu_s += spent_cpu
        sim_now += wall_clock() - wall_before
        cpu_now += spent_cpu
        for event in events:
            if isinstance(event, FinalWords):
                result.words.extend(
                    (word.word, word.start_s, word.end_s, event.committed_at_s)
                    for word in event.words
                )
                result.cpu_clock_commits.extend(cpu_now for _ in event.words)

    chunk = round(CHUNK_S * SAMPLE_RATE)
    audio = recording.audio
    for first in range(0, audio.shape[0], chunk):
        stop = min(first + chunk, audio.shape[0])
        arrival_s = stop / SAMPLE_RATE
        accepted = [intake.accept(m, now_s=arrival_s) for m in sender.push(audio[first:stop])]
        recognize(decoder.decode(accepted), arrival_s, finish=False)
    accepted = [intake.accept(m, now_s=recording.audio_s) for m in sender.finish()]
    recognize(decoder.decode(accepted) + decoder.finish(), recording.audio_s, finish=True)
    result.decode_count = streamer.decode_count
    result.frames_sent = sender.frames_sent
    return result


# -- the offline path -------------------------------------------------------------------------


def offline_caption(recording: Recording, transcriber: Any, scratch: Path) -> tuple[str, float]:
    """``parley caption --local``'s captioner on the recording: its text and process CPU s."""
    import srt

    from media.caption_file import caption_recording

    source = scratch / f"{recording.voice_id}.wav"
    pcm = (np.clip(recording.audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(source), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    out_dir = scratch / f"{recording.voice_id}-captions"

    def no_translator(source: str, target: str) -> Any:
        raise AssertionError("no translation is asked for")

    cpu_before = time.process_time()
    result = caption_recording(
        source, out_dir=out_dir, transcriber=transcriber, translator_factory=no_translator
    )
    cpu_s = time.process_time() - cpu_before
    track = next(path for path in result.outputs.values() if path.suffix == ".srt")
    cues = list(srt.parse(track.read_text(encoding="utf-8")))
    return " ".join(cue.content.replace("\n", " ") for cue in cues), cpu_s


# -- figures ----------------------------------------------------------------------------------

_ONES: Final = tuple(
    [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ]
)
_TENS: Final = tuple(
    ["-", "-", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
)
_NUMBER: Final = re.compile(r"\d+(?:[.:]\d+)?")


def _number_words(value: int) -> str:
    if value < 20:
        return _ONES[value]
    if value < 100:
        tens, ones = divmod(value, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if value < 1000:
        hundreds, rest = divmod(value, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_number_words(rest)}" if rest else "")
    if value < 1_000_000:
        thousands, rest = divmod(value, 1000)
        return f"{_number_words(thousands)} thousand" + (f" {_number_words(rest)}" if rest else "")
    return str(value)


def spoken_numbers(text: str) -> str:
    """Digits as words ("5.30" -> "five thirty", "14" -> "fourteen"), so that WER counts what
    was heard, not how Whisper chose to write a number (it writes "8" in one window and "eight"
    in the next). Applied to both reference and hypothesis; "and" after "hundred" and "o'clock"
    stay as spoken."""

    def words(match: re.Match[str]) -> str:
        return " ".join(_number_words(int(part)) for part in re.split(r"[.:]", match.group(0)))

    return _NUMBER.sub(words, text)


def set_wer(pairs: Sequence[tuple[str, str]]) -> float:
    """Corpus WER after :func:`spoken_numbers` on both sides."""
    return corpus_wer((spoken_numbers(ref), spoken_numbers(hyp)) for ref, hyp in pairs)


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p90_s": None, "p95_s": None, "max_s": None}
    array = np.asarray(values)
    return {
        "p50_s": float(np.percentile(array, 50)),
        "p90_s": float(np.percentile(array, 90)),
        "p95_s": float(np.percentile(array, 95)),
        "max_s": float(array.max()),
    }


def score_stream(recording: Recording, run: StreamRun) -> dict[str, Any]:
    """Per sentence: the streaming words that overlap it, its latency, whether it was lost."""
    sentences = []
    latencies = []
    cpu_latencies = []
    dropped = 0
    text = "".join(word for word, _, _, _ in run.words).strip()
    for reference, (start_s, end_s) in zip(recording.texts, recording.spans_s, strict=True):
        inside = [
            (word, committed, cpu_committed)
            for (word, word_start, word_end, committed), cpu_committed in zip(
                run.words, run.cpu_clock_commits, strict=True
            )
            if word_end >= start_s - OVERLAP_SLACK_S and word_start <= end_s + OVERLAP_SLACK_S
        ]
        if not inside:
            dropped += 1
        else:
            latencies.append(max(0.0, max(committed for _, committed, _ in inside) - end_s))
            cpu_latencies.append(max(0.0, max(at for _, _, at in inside) - end_s))
        sentences.append(
            {
                "reference": reference,
                "start_s": round(start_s, 2),
                "end_s": round(end_s, 2),
                "streaming": "".join(word for word, _, _ in inside).strip(),
            }
        )
    return {
        "text": text,
        "sentences": sentences,
        "latencies": latencies,
        "cpu_latencies": cpu_latencies,
        "dropped": dropped,
    }


def run(
    json_path: Path | None = None,
    *,
    set_path: Path = EVAL_SET,
    voices: Sequence[str] = (),
    offline: bool = True,
    dtx: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the bench on ``set_path``; write the JSON to ``json_path`` if given; return it."""
    from codec.checkpoint import load_checkpoint
    from codec.model import new_model
    from codec.pretrained import DEFAULT_CHECKPOINT
    from daemon.calls import CallModels
    from daemon.config import Config
    from daemon.jobs import default_transcriber_factory

    say = progress if progress is not None else (lambda text: print(text, file=sys.stderr))
    speech_set = load_speech_set(set_path)
    say(f"synthesizing {speech_set.name} ({len(speech_set.voices)} voices)")
    recordings = build_recordings(
        speech_set, default_cache_dir().parent / "asr-stream", voices=voices
    )
    checkpoint = load_checkpoint(DEFAULT_CHECKPOINT)
    codec = new_model(checkpoint.codec_config, checkpoint.state)
    models = CallModels()
    streaming_transcriber = models.transcriber("en")
    offline_transcriber = default_transcriber_factory(Config())() if offline else None
    per_voice = []
    stream_pairs: list[tuple[str, str]] = []
    offline_pairs: list[tuple[str, str]] = []
    latencies: list[float] = []
    cpu_latencies: list[float] = []
    stream_cpu = offline_cpu = 0.0
    dropped = 0
    with tempfile.TemporaryDirectory(prefix="pab", dir="/tmp") as scratch:
        for recording in recordings:
            say(f"{recording.voice_id}: {recording.audio_s:.1f} s, streaming")
            streamed = stream_recording(
                recording,
                codec=codec,
                transcriber=streaming_transcriber,
                settings=models.streaming,
                dtx=dtx,
            )
            scored = score_stream(recording, streamed)
            reference = " ".join(recording.texts)
            stream_pairs.append((reference, scored["text"]))
            latencies.extend(scored["latencies"])
            cpu_latencies.extend(scored["cpu_latencies"])
            dropped += scored["dropped"]
            stream_cpu += streamed.cpu_s
            entry: dict[str, Any] = {
                "voice": recording.voice_id,
                "audio_s": recording.audio_s,
                "streaming_wer": set_wer([(reference, scored["text"])]),
                "dropped_utterances": scored["dropped"],
                "streaming_cpu_s": streamed.cpu_s,
                "decode_count": streamed.decode_count,
                "frames_sent_fraction": streamed.frames_sent
                / (recording.audio_s * codec.config.frame_rate_hz),
                "sentences": scored["sentences"],
            }
            if offline_transcriber is not None:
                say(f"{recording.voice_id}: offline")
                text, cpu_s = offline_caption(recording, offline_transcriber, Path(scratch))
                offline_pairs.append((reference, text))
                offline_cpu += cpu_s
                entry["offline_wer"] = set_wer([(reference, text)])
                entry["offline_cpu_s"] = cpu_s
                entry["offline_text"] = text
            per_voice.append(entry)
    audio_s = sum(recording.audio_s for recording in recordings)
    streaming_wer = set_wer(stream_pairs)
    offline_wer = set_wer(offline_pairs) if offline_pairs else None
    result: dict[str, Any] = {
        "set": speech_set.name,
        "set_file": str(set_path),
        "set_purpose": speech_set.purpose,
        "voices": len(recordings),
        "utterances": sum(len(recording.texts) for recording in recordings),
        "audio_s": audio_s,
        "streaming_wer": streaming_wer,
        "offline_wer": offline_wer,
        "wer_gap": streaming_wer - offline_wer if offline_wer is not None else None,
        "dropped_utterances": dropped,
        "compute_ratio": stream_cpu / offline_cpu if offline_cpu > 0 else None,
        "streaming_cpu_s": stream_cpu,
        "offline_cpu_s": offline_cpu if offline_pairs else None,
        "caption_latency": _percentiles(latencies),
        "caption_latency_cpu_clock": _percentiles(cpu_latencies),
        "dtx": dtx,
        "decode_count": sum(entry["decode_count"] for entry in per_voice),
        "per_voice": per_voice,
        "note": (
            "streaming = CallSender (default codec; with dtx, its Silero VAD sends talkspurts "
            "only) -> FrameIntake -> TalkspurtDecoder -> StreamingTranscriber (gaps as "
            "silence, the sender's end marks end utterances) with the call's Whisper settings "
            "(tiny.en int8 greedy), 100 ms chunks; offline = "
            "parley caption --local's captioner (tiny.en float32, beam 5) on the same WAV. "
            "compute_ratio = process CPU seconds of the streaming pushes / of the offline "
            "transcription. caption_latency = end of a sentence's audio -> its last word "
            "final, on a simulated clock where each push lasts its real wall time (on a "
            "loaded machine, that includes waiting for a core); caption_latency_cpu_clock: the "
            "same where each push lasts its process CPU time (a machine with nothing else to "
            "do, and no parallelism inside a decode: a pessimistic bound for an idle box). "
            "WER after writing digits as words on both sides (spoken_numbers). "
            f"Chunk {CHUNK_S} s; frames per second {FRAMES_PER_SECOND}."
        ),
    }
    write_report(json_path, result)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--set", type=Path, default=EVAL_SET, help="speech set file")
    parser.add_argument("--voice", action="append", default=[], help="only this voice id")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline captioner")
    parser.add_argument("--no-dtx", action="store_true", help="send every frame (no sender VAD)")
    args = parser.parse_args(argv)
    result = run(
        args.json,
        set_path=args.set,
        voices=args.voice,
        offline=not args.no_offline,
        dtx=not args.no_dtx,
    )
    print_report(result)


if __name__ == "__main__":
    main()
