"""DTX must not split a sentence at a pause inside it (issue 16).

A sentence read with a half-second pause at its comma (real espeak-ng and flite speech) goes
through the caller's sender with the real Silero VAD. The sender must send it as one talkspurt
with one end mark, and the listener must finalize it once, after its last word. With the end
mark after the detector's first 0.3 s of quiet, the mark fell inside the pause: the listener
ended the utterance there and committed the first half without its right context (a cause
of the WER regression of the DTX change on the tuning material; a 0.5 s pause cost espeak m4
0.23 -> 0.40 WER and flite kal 0.03 -> 0.13 on four such sentences).

Oracles: the known layout of the signal (where each half's speech is) and the listener's own
rule without DTX, which bridges pauses shorter than its hangover plus ``end_of_utterance_s``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from codec.checkpoint import load_checkpoint
from codec.model import CodecModel, new_model
from daemon.calls import CallModels
from media.audio import load_audio
from media.call_receiver import CallLimits, FrameIntake, TalkspurtDecoder, feed_transcriber
from media.call_sender import CallSender, codec_settings
from media.features import SAMPLE_RATE
from media.sender_vad import SileroStreamingVad, load_silero_session
from media.streaming_asr import FinalWords, StreamingTranscriber, UtteranceEnd
from schemas.messages import CallStart, CodecFrames, VoiceTraits
from simulations.bench_call import trained_caller_checkpoint
from simulations.corpus import VoiceEngine, VoiceSpec, synthesize_texts

HALVES = ("Turn the music down", "the baby is asleep.")
PAUSE_S = 0.5
LEAD_S = 0.8
TAIL_S = 2.0
PUSH = 1600  # 100 ms, as a call batches
VOICES = (
    VoiceSpec(
        id="dtx-espeak-m4",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+m4",
        pitch=40,
        words_per_minute=150,
    ),
    VoiceSpec(id="dtx-flite-kal16", engine=VoiceEngine.FLITE, voice="kal16"),
)


def _trimmed(path: Path) -> npt.NDArray[np.float32]:
    """The synthesizer's output without its leading and trailing silence (-50 dBFS)."""
    samples = load_audio(path)
    loud = np.flatnonzero(np.abs(samples) > 10 ** (-50 / 20))
    return samples[int(loud[0]) : int(loud[-1]) + 1]


def _paused_sentence(
    spec: VoiceSpec, cache: Path
) -> tuple[npt.NDArray[np.float32], tuple[float, float], tuple[float, float]]:
    """The sentence with a 0.5 s pause at its comma (faint noise floor); each half's span in s."""
    first, second = (_trimmed(u.wav_path) for u in synthesize_texts(cache, spec, HALVES))
    lead = np.zeros(round(LEAD_S * SAMPLE_RATE), dtype=np.float32)
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    tail = np.zeros(round(TAIL_S * SAMPLE_RATE), dtype=np.float32)
    signal = np.concatenate([lead, first, pause, second, tail])
    signal += np.random.default_rng(5).normal(0.0, 1e-3, signal.shape).astype(np.float32)
    first_span = (LEAD_S, LEAD_S + first.size / SAMPLE_RATE)
    second_start = first_span[1] + PAUSE_S
    return signal, first_span, (second_start, second_start + second.size / SAMPLE_RATE)


@functools.cache
def _caller_codec() -> CodecModel:
    checkpoint = load_checkpoint(trained_caller_checkpoint())
    return new_model(checkpoint.codec_config, checkpoint.state)


def _send(signal: npt.NDArray[np.float32]) -> list[tuple[float, list[CodecFrames]]]:
    """(audio time at the end of each push, the messages that push made), with DTX."""
    sender = CallSender(_caller_codec(), vad=SileroStreamingVad(load_silero_session()))
    pushes = []
    for first in range(0, signal.shape[0], PUSH):
        stop = min(first + PUSH, signal.shape[0])
        pushes.append((stop / SAMPLE_RATE, sender.push(signal[first:stop])))
    pushes.append((signal.shape[0] / SAMPLE_RATE, sender.finish()))
    return pushes


@pytest.mark.slow
@pytest.mark.parametrize("spec", VOICES, ids=[v.id for v in VOICES])
def test_a_pause_inside_a_sentence_does_not_end_the_talkspurt(
    spec: VoiceSpec, tmp_path: Path
) -> None:
    signal, _, (_, second_end) = _paused_sentence(spec, tmp_path)
    messages = [m for _, batch in _send(signal) for m in batch]
    starts = [m for m in messages if m.speech_start]
    ends = [m for m in messages if m.speech_end]
    assert len(starts) == 1
    assert len(ends) == 1
    rate = _caller_codec().config.frame_rate_hz
    assert ends[0].start_time_s + ends[0].frame_count / rate >= second_end


@pytest.mark.slow
def test_the_listener_finalizes_a_paused_sentence_once_after_its_last_word(
    tmp_path: Path,
) -> None:
    signal, (first_start, first_end), (second_start, second_end) = _paused_sentence(
        VOICES[0], tmp_path
    )
    codec = _caller_codec()
    models = CallModels()
    transcriber = StreamingTranscriber(models.transcriber("en"), settings=models.streaming)
    start = CallStart(7, "en", "en", codec_settings(codec, b"h" * 32), VoiceTraits(110.0, 2.5))
    intake = FrameIntake(start, CallLimits())
    decoder = TalkspurtDecoder(codec)
    events = []
    for at_s, batch in _send(signal):
        accepted = [intake.accept(m, now_s=at_s) for m in batch]
        clock = functools.partial(float, at_s)
        events += feed_transcriber(transcriber, decoder.decode(accepted), clock=clock).events
    events += feed_transcriber(transcriber, decoder.finish(), clock=lambda: 0.0).events
    events += transcriber.finish(now_s=0.0)
    ends = [e for e in events if isinstance(e, UtteranceEnd)]
    assert len(ends) == 1
    assert ends[0].no_word_before_s >= second_end
    words = [w for e in events if isinstance(e, FinalWords) for w in e.words]
    # Neither half is lost.
    assert [w for w in words if w.end_s >= first_start and w.start_s <= first_end]
    assert [w for w in words if w.end_s >= second_start and w.start_s <= second_end]
