"""Discontinuous transmission (issue 16): the sender sends no codec frames during silence, the
listener's timeline stays right across the gaps, and the sender's end mark finalizes the
utterance at once.

Oracles: the known layout of the test signals (where the speech is: samples above a level),
real time (a gap announced ahead of it is a flood), and the same call without end marks.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import numpy.typing as npt
import pytest

from codec.checkpoint import load_checkpoint
from codec.config import CodecConfig
from codec.latent import pack_codes
from codec.model import CodecModel, new_model
from daemon.calls import CallModels
from daemon.node import CAPABILITIES
from media.call_receiver import (
    AcceptedFrames,
    CallLimitError,
    CallLimits,
    FrameIntake,
    TalkspurtDecoder,
    feed_transcriber,
)
from media.call_sender import DTX_CAPABILITY, KEEPALIVE_S, CallSender, codec_settings
from media.features import SAMPLE_RATE
from media.sender_vad import SenderVadSettings, SileroStreamingVad, load_silero_session
from media.streaming_asr import FinalWords, StreamingTranscriber, UtteranceEnd
from media.wer import wer
from schemas.messages import CallStart, CodecFrames, VoiceTraits
from simulations.bench_call import script_audio, trained_caller_checkpoint

CONFIG = CodecConfig()
RATE = CONFIG.frame_rate_hz
VOICE = VoiceTraits(median_pitch_hz=110.0, speaking_rate_wps=2.5)
FIRST = "Stop whistling and watch the boys march."
SECOND = "A new wax protects the deep scratch."
PAUSE_S = 5.0
LEAD_S = 1.0
PUSH = 1600  # 100 ms, as a call batches
#: The quiet after the speech that ends a talkspurt.
QUIET_S = SenderVadSettings().min_silence_s


def _start(model: CodecModel | None = None) -> CallStart:
    model = model if model is not None else new_model(CONFIG)
    return CallStart(7, "en", "pt", codec_settings(model, b"h" * 32), VOICE)


def _frames(seq: int, first: int, count: int, **marks: bool) -> CodecFrames:
    codes = np.full((count, CONFIG.latent_dim), 3, dtype=np.uint8)
    payload = pack_codes(codes, CONFIG.latent_bits) if count else b""
    return CodecFrames(seq, first / RATE, count, payload, **marks)


# -- the listener's intake, with hand-made messages -------------------------------------------


def test_intake_places_gaps_and_keepalives_on_the_timeline() -> None:
    intake = FrameIntake(_start(), CallLimits())
    messages = [
        _frames(0, 0, 10, speech_start=True),
        _frames(1, 10, 4, speech_end=True),
        _frames(2, 39, 0),  # keepalive: silence up to frame 39
        _frames(3, 64, 5, speech_start=True),  # 25 more frames of silence, then speech
        _frames(4, 69, 3),
    ]
    accepted = [intake.accept(m, now_s=10.0) for m in messages]
    assert [a.gap_frames for a in accepted] == [0, 0, 25, 25, 0]
    assert [a.new_talkspurt for a in accepted] == [True, False, False, True, False]
    assert [a.speech_end for a in accepted] == [False, True, False, False, False]
    assert [a.frame_count for a in accepted] == [10, 4, 0, 5, 3]
    assert intake.audio_s == pytest.approx(72 / RATE)
    assert (intake.frames, intake.keepalives, intake.messages) == (22, 1, 5)


def test_the_talkspurt_after_an_end_mark_gets_a_fresh_decoder_even_without_a_gap() -> None:
    intake = FrameIntake(_start(), CallLimits())
    first = intake.accept(_frames(0, 0, 8, speech_end=True), now_s=1.0)
    second = intake.accept(_frames(1, 8, 8, speech_start=True), now_s=1.0)
    assert first.new_talkspurt and second.new_talkspurt and second.gap_frames == 0


@pytest.mark.parametrize(
    ("second", "now_s", "code"),
    [
        (_frames(1, 5, 2), 10.0, "not_contiguous"),  # back in time
        (_frames(1, 0, 0), 10.0, "not_contiguous"),  # a keepalive before the frames' end
        (_frames(1, round(20 * RATE), 0), 1.0, "flood"),  # silence announced ahead of time
        (_frames(1, round(20 * RATE), 2), 1.0, "flood"),
    ],
)
def test_time_never_goes_back_nor_runs_ahead_of_the_clock(
    second: CodecFrames, now_s: float, code: str
) -> None:
    intake = FrameIntake(_start(), CallLimits())
    intake.accept(_frames(0, 0, 10), now_s=1.0)
    with pytest.raises(CallLimitError) as caught:
        intake.accept(second, now_s=now_s)
    assert caught.value.code == code


def test_nodes_announce_dtx() -> None:
    assert DTX_CAPABILITY in CAPABILITIES


# -- the sender, with the real Silero VAD ------------------------------------------------------


@functools.cache
def _caller_codec() -> CodecModel:
    checkpoint = load_checkpoint(trained_caller_checkpoint())
    return new_model(checkpoint.codec_config, checkpoint.state)


def _speech_span(samples: npt.NDArray[np.float32]) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return int(loud[0]), int(loud[-1]) + 1


@functools.cache
def _two_sentences() -> tuple[npt.NDArray[np.float32], list[tuple[float, float]]]:
    """FIRST, a 5 s pause, SECOND (with a faint noise floor); each sentence's speech span in s."""
    first, second = script_audio((FIRST,)), script_audio((SECOND,))
    lead = np.zeros(round(LEAD_S * SAMPLE_RATE), dtype=np.float32)
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    signal = np.concatenate([lead, first, pause, second, lead])
    signal += np.random.default_rng(3).normal(0.0, 1e-3, signal.shape).astype(np.float32)
    spans = []
    for offset, part in ((lead.size, first), (lead.size + first.size + pause.size, second)):
        begin, end = _speech_span(part)
        spans.append(((offset + begin) / SAMPLE_RATE, (offset + end) / SAMPLE_RATE))
    return signal, spans


def _send(
    signal: npt.NDArray[np.float32], model: CodecModel
) -> list[tuple[float, list[CodecFrames]]]:
    """(audio time at the end of each push, the messages that push made)."""
    sender = CallSender(model, vad=SileroStreamingVad(load_silero_session()))
    pushes = []
    for first in range(0, signal.shape[0], PUSH):
        stop = min(first + PUSH, signal.shape[0])
        pushes.append((stop / SAMPLE_RATE, sender.push(signal[first:stop])))
    pushes.append((signal.shape[0] / SAMPLE_RATE, sender.finish()))
    assert sender.audio_s_sent == pytest.approx(signal.shape[0] / SAMPLE_RATE, abs=0.1)
    return pushes


@pytest.mark.slow
def test_the_sender_sends_no_frames_during_a_five_second_pause() -> None:
    signal, ((_, first_end), (second_start, second_end)) = _two_sentences()
    messages = [m for _, batch in _send(signal, _caller_codec()) for m in batch]
    with_frames = [m for m in messages if m.frame_count]
    spans = [(m.start_time_s, m.start_time_s + m.frame_count / RATE) for m in with_frames]
    # Nothing inside the pause but its edges: the talkspurt's tail (the VAD's quiet, a push,
    # the codec's padding) and the next one's pre-roll.
    assert not [s for s in spans if s[1] > first_end + QUIET_S + 0.3 and s[0] < second_start - 0.5]
    keepalives = [m for m in messages if not m.frame_count]
    assert all(not m.payload for m in keepalives)
    in_pause = [m for m in keepalives if first_end < m.start_time_s < second_start]
    assert 3 <= len(in_pause) <= PAUSE_S / KEEPALIVE_S + 1
    # Two talkspurts, each from before its speech to after it.
    starts = [m for m in messages if m.speech_start]
    ends = [m for m in messages if m.speech_end]
    assert len(starts) == len(ends) == 2
    assert starts[1].start_time_s <= second_start <= spans[-1][1]
    assert spans[-1][1] >= second_end
    # Less than 60 % of the call's frames went out (the pause is 5 of 11 s).
    assert sum(m.frame_count for m in with_frames) < 0.6 * signal.shape[0] / SAMPLE_RATE * RATE
    # Every message is on the latent grid and time only moves forward.
    positions = [m.start_time_s * RATE for m in messages]
    assert np.allclose(positions, np.round(positions), atol=1e-6)
    ends_at = [m.start_time_s + m.frame_count / RATE for m in messages]
    assert all(b.start_time_s >= a - 1e-9 for a, b in zip(ends_at, messages[1:], strict=False))


# -- the listener's recognizer across the gaps -------------------------------------------------


@functools.cache
def _transcriber_model() -> object:
    return CallModels().transcriber("en")


def _listen(
    pushes: list[tuple[float, list[CodecFrames]]], model: CodecModel
) -> list[tuple[float, object]]:
    """Each caption event with the audio time of the push whose messages caused it."""
    models = CallModels()
    transcriber = StreamingTranscriber(_transcriber_model(), settings=models.streaming)  # type: ignore[arg-type]
    intake = FrameIntake(_start(model), CallLimits())
    decoder = TalkspurtDecoder(model)
    events: list[tuple[float, object]] = []
    for at_s, messages in pushes:
        accepted: list[AcceptedFrames] = [intake.accept(m, now_s=at_s) for m in messages]
        clock = functools.partial(float, at_s)
        fed = feed_transcriber(transcriber, decoder.decode(accepted), clock=clock)
        events.extend((at_s, event) for event in fed.events)
    final_s = pushes[-1][0]
    fed = feed_transcriber(transcriber, decoder.finish(), clock=functools.partial(float, final_s))
    events.extend((final_s, event) for event in fed.events)
    events.extend((final_s, event) for event in transcriber.finish(now_s=final_s))
    return events


@pytest.mark.slow
def test_caption_times_stay_right_across_a_pause() -> None:
    signal, spans = _two_sentences()
    events = _listen(_send(signal, _caller_codec()), _caller_codec())
    words = [w for _, e in events if isinstance(e, FinalWords) for w in e.words]
    text = "".join(w.word for w in words)
    assert wer(f"{FIRST} {SECOND}", text) <= 0.15
    second_words = [w for w in words if w.start_s > spans[0][1] + 1.0]
    assert "".join(w.word for w in second_words).strip().lower().startswith("a new wax")
    # The second sentence's words sit on its speech, 5 s after the first: a listener that
    # lost the gap would place them seconds early.
    assert abs(second_words[0].start_s - spans[1][0]) <= 0.4
    assert abs(second_words[-1].end_s - spans[1][1]) <= 0.6


@pytest.mark.slow
def test_the_senders_end_mark_finalizes_the_utterance_at_once() -> None:
    signal, spans = _two_sentences()
    pushes = _send(signal, _caller_codec())

    def utterance_end_at(events: list[tuple[float, object]]) -> float:
        return next(at for at, e in events if isinstance(e, UtteranceEnd))

    marked = utterance_end_at(_listen(pushes, _caller_codec()))
    unmarked_pushes = [
        (at, [dataclasses.replace(m, speech_end=False) for m in batch]) for at, batch in pushes
    ]
    unmarked = utterance_end_at(_listen(unmarked_pushes, _caller_codec()))
    first_end = spans[0][1]
    # The mark comes with the talkspurt's last frames: the VAD's quiet after the speech, plus
    # at most a push and a latent frame of rounding.
    assert marked <= first_end + QUIET_S + 0.1 + 0.1
    # Without it the listener waits for silence it only learns of at the next keepalive.
    assert unmarked >= marked + 0.5
