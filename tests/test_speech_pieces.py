"""Speech in pieces (issue 14, mouth-to-ear): the listener hands the first piece of a cue's
speech to the playout before the rest is synthesized, pieces play in order without gaps or
overlap, odd texts still get a result, and the first cue does not pay the voice's calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.config import CodecConfig
from codec.model import new_model
from daemon.call_audio import Playout
from daemon.call_models import CallModels
from media.asr import FeatureTranscriber
from media.audio_devices import PlayoutBuffer
from media.call_receiver import ListenerPipeline, SpeechPiece
from media.call_sender import codec_settings
from media.captions import Cue
from media.speech_pieces import (
    FIRST_PIECE_MAX_WORDS,
    MAX_PIECE_WORDS,
    PlayoutGate,
    SynthesisSpeed,
    split_for_speech,
)
from media.streaming_asr import StreamingTranscriber
from media.tts import PiperSynthesizer, Speech, SynthesisError
from schemas.messages import CallStart, VoiceTraits, WordTime

RATE = 16_000
VOICE = VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5)

# -- splitting ---------------------------------------------------------------------------------


@given(
    st.lists(st.sampled_from(["word", "x,", "end.", "¿que?", "“yes,”", "—", "..."]), max_size=80)
)
def test_pieces_keep_every_word_in_order_within_their_budgets(words: list[str]) -> None:
    text = "  ".join(words)
    pieces = split_for_speech(text)
    assert " ".join(pieces) == " ".join(text.split())
    assert all(piece.strip() for piece in pieces)
    if pieces:
        assert len(pieces[0].split()) <= FIRST_PIECE_MAX_WORDS
    assert all(len(piece.split()) <= MAX_PIECE_WORDS for piece in pieces)


def test_the_first_piece_ends_at_a_clause_and_later_pieces_grow() -> None:
    text = "Bom dia, eu estou ouvindo você muito bem. Hoje o tempo está bonito aqui na cidade."
    assert split_for_speech(text) == [
        "Bom dia,",
        "eu estou ouvindo você muito bem.",
        "Hoje o tempo está bonito aqui na cidade.",
    ]


def test_one_word_punctuation_only_and_a_very_long_sentence() -> None:
    assert split_for_speech("Sim") == ["Sim"]
    assert split_for_speech("") == []
    assert split_for_speech("  \n ") == []
    assert split_for_speech("?! ...") == ["?! ..."]
    long = " ".join(f"w{i}" for i in range(300))  # no punctuation at all
    pieces = split_for_speech(long)
    assert " ".join(pieces) == long
    assert [len(p.split()) for p in pieces[:4]] == [6, 9, 13, 19]
    assert 20 <= max(len(p.split()) for p in pieces) <= MAX_PIECE_WORDS


def test_the_gate_opens_at_once_for_a_fast_synthesizer_and_waits_for_a_slow_one() -> None:
    fast = PlayoutGate([5, 10, 5], SynthesisSpeed(wall_per_audio=0.1), margin=1.25)
    assert fast.synthesized(audio_s=2.0)  # 15 words left ≈ 0.75 s of synthesis, 2 s ahead
    # 0.5 s per second of audio: the 10-word piece (≈ 2.5 s to make) would be late after 2 s.
    medium = PlayoutGate([5, 10, 5], SynthesisSpeed(wall_per_audio=0.5), margin=1.25)
    assert not medium.synthesized(audio_s=2.0)
    assert medium.synthesized(audio_s=4.0)  # 6 s ahead, 5 words ≈ 1.25 s to make
    assert medium.synthesized(audio_s=2.0)  # open stays open
    # Only the next piece matters when later ones have enough audio ahead of them.
    assert (
        PlayoutGate([6, 2, 40], SynthesisSpeed(wall_per_audio=0.9), margin=1.25).synthesized(2.4)
        is False
    )
    assert PlayoutGate([6, 2, 4], SynthesisSpeed(wall_per_audio=0.5), margin=1.25).synthesized(2.4)
    assert PlayoutGate([3], SynthesisSpeed(wall_per_audio=9.0), margin=1.25).synthesized(
        1.0
    )  # the last
    # The default margin: a piper-fast synthesizer starts at its first piece, a Kokoro-fast
    # one (about 0.35 wall s per audio s idle) plays its cue whole rather than risk a gap.
    assert PlayoutGate([6, 9, 13], SynthesisSpeed(wall_per_audio=0.1)).synthesized(2.0)
    assert not PlayoutGate([6, 9, 13], SynthesisSpeed(wall_per_audio=0.35)).synthesized(2.0)
    speed = SynthesisSpeed()
    assert speed.wall_per_audio == 1.0  # pessimistic until measured
    speed.measured(1.0, 4.0)
    assert speed.wall_per_audio == pytest.approx(0.25)  # the first measurement replaces it
    speed.measured(3.0, 4.0)
    assert speed.wall_per_audio == pytest.approx(0.75)  # a slower one is believed at once
    speed.measured(1.0, 4.0)
    assert speed.wall_per_audio == pytest.approx(0.5)  # a faster one is smoothed
    speed.measured(1.0, 0.0)  # no audio: nothing learnt
    assert speed.wall_per_audio == pytest.approx(0.5)


# -- the listener hands pieces over (stand-in models: event order, not the models) -------------


class _RecordingSynthesizerStandIn:
    """Records each synthesis in a shared event log; 0.1 s of a tone per word."""

    def __init__(self, events: list[str], *, fail_on: str | None = None) -> None:
        self._events = events
        self._fail_on = fail_on

    @property
    def language(self) -> str:
        return "pt"

    def synthesize(self, text: str, *, voice: VoiceTraits | None = None) -> Speech:
        if self._fail_on is not None and self._fail_on in text:
            raise SynthesisError(f"stand-in refuses {text!r}")
        self._events.append(f"synthesized {text}")
        words = len(text.split())
        level = 0.01 * (1 + len(self._events))  # each piece recognisable in the output
        return Speech(np.full(words * RATE // 10, level, np.float32), RATE)


class _IdentityTranslatorStandIn:
    def translate(self, texts: list[str]) -> list[str]:
        return list(texts)


@pytest.fixture(scope="module")
def tiny_transcriber() -> FeatureTranscriber:
    return CallModels().transcriber("en")


def _pipeline(
    tmp_path: Path,
    transcriber: FeatureTranscriber,
    synthesizer: object,
    on_speech: object,
    speed: SynthesisSpeed,
) -> ListenerPipeline:
    codec = new_model(CodecConfig())
    start = CallStart(1, "en", "pt", codec_settings(codec, b"h" * 32), VOICE)
    return ListenerPipeline(
        start=start,
        decoder=codec,
        transcriber=StreamingTranscriber(transcriber),
        translator=_IdentityTranslatorStandIn(),  # type: ignore[arg-type]
        synthesizer=synthesizer,  # type: ignore[arg-type]
        call_dir=tmp_path / "call",
        clock=lambda: 10.0,
        on_speech=on_speech,  # type: ignore[arg-type]
        synthesis_speed=speed,
    )


def _cue(text: str, start_s: float = 1.0) -> Cue:
    words = tuple(
        WordTime(word=w, start_s=start_s + 0.3 * i, end_s=start_s + 0.3 * i + 0.25)
        for i, w in enumerate(text.split())
    )
    return Cue(index=1, start_s=start_s, end_s=words[-1].end_s, lines=(text,), words=words)


TEXT = "Bom dia, eu estou ouvindo você muito bem. Hoje o tempo está bonito aqui na cidade."


def test_first_piece_reaches_the_playout_before_the_last_is_synthesized_with_stand_in_models(
    tmp_path: Path, tiny_transcriber: FeatureTranscriber
) -> None:
    events: list[str] = []
    pieces: list[SpeechPiece] = []

    def hear(piece: SpeechPiece) -> None:
        events.append(f"played {piece.samples.size} final={piece.final}")
        pieces.append(piece)

    pipeline = _pipeline(
        tmp_path,
        tiny_transcriber,
        _RecordingSynthesizerStandIn(events),
        hear,
        SynthesisSpeed(wall_per_audio=0.01),  # a synthesizer far faster than speech
    )
    pipeline.translate(_cue(TEXT))
    pipeline.close()
    assert events == [
        "synthesized Bom dia,",
        f"played {2 * RATE // 10} final=False",
        "synthesized eu estou ouvindo você muito bem.",
        f"played {6 * RATE // 10} final=False",
        "synthesized Hoje o tempo está bonito aqui na cidade.",
        f"played {8 * RATE // 10} final=True",
    ]
    assert len({p.utterance_id for p in pieces}) == 1
    assert {p.speech_end_s for p in pieces} == {_cue(TEXT).words[-1].end_s}
    summary = pipeline.summary()
    assert summary["latency"]["tts_first"]["count"] == 1  # type: ignore[index]
    assert pipeline.counts["tts_pieces"] == 3 and pipeline.counts["tts_early_starts"] == 1
    # The received file holds the pieces back to back after the cue's start: no gap, no overlap.
    import wave

    with wave.open(str(tmp_path / "call" / "received.pt.wav")) as file:
        written = np.frombuffer(file.readframes(file.getnframes()), "<i2")
    speech = np.concatenate([p.samples for p in pieces])
    assert written.size == RATE + speech.size
    assert np.array_equal(written[RATE:], (speech * 32767).astype("<i2"))


class _PinnedSpeed(SynthesisSpeed):
    """A speed that ignores what it measures (the stand-in synthesizer is instant)."""

    def measured(self, wall_s: float, audio_s: float) -> None:
        pass


def test_a_slow_synthesizer_holds_pieces_back_until_the_rest_can_follow_with_stand_in_models(
    tmp_path: Path, tiny_transcriber: FeatureTranscriber
) -> None:
    events: list[str] = []
    speed = _PinnedSpeed(wall_per_audio=5.0)  # five times slower than speech: no head start
    pipeline = _pipeline(
        tmp_path,
        tiny_transcriber,
        _RecordingSynthesizerStandIn(events),
        lambda piece: events.append(f"played final={piece.final}"),
        speed,
    )
    pipeline.translate(_cue(TEXT))
    pipeline.close()
    assert [e.split()[0] for e in events] == ["synthesized"] * 3 + ["played"] * 3
    assert events[-1] == "played final=True"
    assert pipeline.counts["tts_pieces"] == 3 and pipeline.counts["tts_early_starts"] == 0


def test_a_failing_piece_still_closes_the_utterance_for_the_playout_with_stand_in_models(
    tmp_path: Path, tiny_transcriber: FeatureTranscriber
) -> None:
    events: list[str] = []
    playout = Playout(PlayoutBuffer(sample_rate_hz=RATE))
    pipeline = _pipeline(
        tmp_path,
        tiny_transcriber,
        _RecordingSynthesizerStandIn(events, fail_on="Hoje"),
        playout.play,
        SynthesisSpeed(wall_per_audio=0.01),
    )
    pipeline.translate(_cue(TEXT))
    pipeline.translate(_cue("Tchau.", start_s=8.0))  # the next cue must still be heard
    pipeline.close()
    assert pipeline.counts["tts_errors"] == 1
    out = playout.buffer.pull(RATE * 2)
    heard = out[out != 0]
    assert heard.size == (2 + 6 + 1) * RATE // 10  # both good pieces, then "Tchau."
    assert playout.buffer.idle() and playout.underruns == 0
    assert [p.utterance_id for p in playout.buffer.started] == [1, 2]


# -- the playout -------------------------------------------------------------------------------


def test_pieces_play_in_order_without_overlap_and_an_empty_utterance_does_not_stall() -> None:
    playout = Playout(PlayoutBuffer(sample_rate_hz=RATE))

    def piece(utterance: int, value: float, size: int, *, final: bool) -> SpeechPiece:
        return SpeechPiece(utterance, np.full(size, value, np.float32), RATE, 1.0, final)

    playout.play(piece(1, 0.1, 100, final=False))
    playout.play(piece(1, 0.2, 50, final=False))
    playout.play(piece(2, 0.0, 0, final=True))  # a text with no sound (punctuation only)
    playout.play(piece(1, 0.3, 70, final=True))
    playout.play(piece(3, 0.4, 30, final=True))
    out = playout.buffer.pull(300)
    expected = np.concatenate(
        [np.full(100, 0.1), np.full(50, 0.2), np.full(70, 0.3), np.full(30, 0.4), np.zeros(50)]
    ).astype(np.float32)
    assert np.array_equal(out, expected)
    assert playout.underruns == 0 and playout.buffer.idle()
    assert [(p.utterance_id, p.first_sample) for p in playout.buffer.started] == [(1, 0), (3, 220)]


# -- real synthesizers -------------------------------------------------------------------------


def test_the_first_cue_does_not_pay_the_voice_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    synthesizer = CallModels().synthesizer("en")  # piper, warmed up as a call loads it
    assert isinstance(synthesizer, PiperSynthesizer)
    runs: list[str] = []
    original = PiperSynthesizer._run

    def counting(self: PiperSynthesizer, text: str, *, length_scale: float) -> Speech:
        runs.append(text)
        return original(self, text, length_scale=length_scale)

    monkeypatch.setattr(PiperSynthesizer, "_run", counting)
    speech = synthesizer.synthesize("Hello there.", voice=VOICE)
    assert runs == ["Hello there."]  # no calibration sentence before it
    assert speech.duration_s > 0.3
    # The load also timed it (the playout gate's first estimate, not an assumption).
    assert CallModels().synthesis_speed("en").measurements == 1


def test_real_piper_speaks_a_one_word_and_a_punctuation_only_cue_in_pieces(
    tmp_path: Path, tiny_transcriber: FeatureTranscriber
) -> None:
    models = CallModels()
    playout = Playout(PlayoutBuffer(sample_rate_hz=22_050))
    pipeline = _pipeline(
        tmp_path, tiny_transcriber, models.synthesizer("en"), playout.play, SynthesisSpeed()
    )
    pipeline.translate(_cue("Yes."))
    pipeline.translate(_cue("?!", start_s=3.0))
    pipeline.translate(_cue("Hello, this is a test of speech in pieces.", start_s=5.0))
    pipeline.close()
    assert pipeline.counts["tts_errors"] == 0
    pulled = [playout.buffer.pull(22_050) for _ in range(10)]
    assert playout.buffer.idle() and playout.underruns == 0
    assert np.abs(np.concatenate(pulled)).max() > 0.05
    started = [p.utterance_id for p in playout.buffer.started]
    assert started == sorted(started) and len(started) >= 2


def test_a_cue_translated_too_late_is_shown_but_not_spoken_with_stand_in_models(
    tmp_path: Path, tiny_transcriber: FeatureTranscriber
) -> None:
    """A node behind on its calls keeps captions first: a cue whose translation is ready more
    than max_speech_delay_s after its speech ended gets its caption, and no speech."""
    for delay_s, spoken in ((2.0, False), (20.0, True), (None, True)):
        events: list[str] = []
        codec = new_model(CodecConfig())
        start = CallStart(1, "en", "pt", codec_settings(codec, b"h" * 32), VOICE)
        pipeline = ListenerPipeline(
            start=start,
            decoder=codec,
            transcriber=StreamingTranscriber(tiny_transcriber),
            translator=_IdentityTranslatorStandIn(),  # type: ignore[arg-type]
            synthesizer=_RecordingSynthesizerStandIn(events),  # type: ignore[arg-type]
            call_dir=tmp_path / f"call-{delay_s}",
            clock=lambda: 10.0,  # the cue's speech ended at 5.45 s: 4.55 s late
            on_speech=lambda piece, events=events: events.append("played"),
            synthesis_speed=SynthesisSpeed(wall_per_audio=0.01),
            max_speech_delay_s=delay_s,
        )
        captions = pipeline.translate(_cue(TEXT))
        pipeline.close()
        assert [caption.text for caption in captions] == [TEXT]
        assert bool(events) is spoken, (delay_s, events)
        assert pipeline.counts["speech_shed"] == (0 if spoken else 1)
        assert pipeline.summary()["counts"]["speech_shed"] == pipeline.counts["speech_shed"]  # type: ignore[index]
