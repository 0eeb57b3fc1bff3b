"""The synthetic multi-speaker corpus: distinct voices, the right format, a working cache."""

from __future__ import annotations

import itertools
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from simulations.corpus import (
    DEFAULT_SPEAKERS,
    CorpusError,
    VoiceEngine,
    VoiceSpec,
    build_corpus,
    sentences_for,
)
from simulations.harvard import (
    HARVARD_LISTS,
    HARVARD_SENTENCES,
    HELDOUT_SENTENCES,
    TRAIN_SENTENCES,
)


def require_tools() -> None:
    for tool in ("flite", "espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path), "rb") as reader:
        frames = reader.readframes(reader.getnframes())
        rate, channels, width = reader.getframerate(), reader.getnchannels(), reader.getsampwidth()
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0, rate, channels, width


def long_term_spectrum(audio: np.ndarray) -> np.ndarray:
    """Average power spectrum in dB over 32 bands of 250 Hz (a voice's timbre and pitch range)."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, 512)[::256] * np.hanning(512)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)[:256]
    bands = power.reshape(32, 8).sum(axis=1)
    spectrum = 10.0 * np.log10(bands + 1e-12)
    return spectrum - spectrum.max()


def pitch_hz(audio: np.ndarray, rate: int = 16_000) -> float:
    """Median autocorrelation pitch of the voiced (loud) 40 ms frames, in 60-400 Hz."""
    estimates = []
    size = 640
    loud = 0.3 * np.max(np.abs(audio))
    for start in range(0, len(audio) - size, size // 2):
        frame = audio[start : start + size]
        if np.max(np.abs(frame)) < loud:
            continue
        frame = frame - frame.mean()
        correlation = np.correlate(frame, frame, mode="full")[size - 1 :]
        low, high = rate // 400, rate // 60
        lag = low + int(np.argmax(correlation[low:high]))
        if correlation[lag] > 0.3 * correlation[0]:
            estimates.append(rate / lag)
    return float(np.median(estimates))


def test_harvard_lists_are_complete_and_split_disjointly() -> None:
    assert len(HARVARD_LISTS) == 10
    assert all(len(group) == 10 for group in HARVARD_LISTS)
    assert len(set(HARVARD_SENTENCES)) == 100
    assert HARVARD_SENTENCES[0] == "The birch canoe slid on the smooth planks."
    assert HARVARD_SENTENCES[-1] == "Bring your problems to the wise chief."
    assert len(TRAIN_SENTENCES) == 80 and len(HELDOUT_SENTENCES) == 20
    assert not set(TRAIN_SENTENCES) & set(HELDOUT_SENTENCES)


def test_sentence_assignment_never_mixes_train_and_heldout() -> None:
    heldout_seen = set()
    for index in range(12):
        train, heldout = sentences_for(index, train_per_speaker=80, heldout_per_speaker=20)
        assert len(set(train)) == 80
        assert not set(train) & set(heldout)
        heldout_seen.add(heldout)
    # Every speaker reads the same held-out sentences: one fixed test set.
    assert len(heldout_seen) == 1
    with pytest.raises(CorpusError):
        sentences_for(0, train_per_speaker=81, heldout_per_speaker=1)


def test_default_corpus_has_at_least_eight_distinct_voices(tmp_path: Path) -> None:
    require_tools()
    corpus = build_corpus(tmp_path, train_per_speaker=1, heldout_per_speaker=1)
    assert len(corpus.speakers) == len(DEFAULT_SPEAKERS) >= 8
    spectra = {}
    pitches = {}
    for speaker in corpus.speakers:
        (utterance,) = speaker.heldout
        assert utterance.text == HELDOUT_SENTENCES[0]
        audio, rate, channels, width = read_wav(utterance.wav_path)
        assert (rate, channels, width) == (16_000, 1, 2)
        assert 1.0 < len(audio) / rate < 6.0
        spectra[speaker.id] = long_term_spectrum(audio)
        pitches[speaker.id] = pitch_hz(audio)
    # Same sentence, different voices: every pair differs clearly in timbre or pitch.
    for first, second in itertools.combinations(spectra, 2):
        spectral_db = float(np.mean(np.abs(spectra[first] - spectra[second])))
        pitch_ratio = max(pitches[first], pitches[second]) / min(pitches[first], pitches[second])
        assert spectral_db > 2.0 or pitch_ratio > 1.15, (first, second, spectral_db, pitch_ratio)
    # Low and high voices both present (male and female speakers).
    assert min(pitches.values()) < 150 < max(pitches.values())


def test_cache_reuses_files_and_regenerates_only_what_is_missing(tmp_path: Path) -> None:
    require_tools()
    speakers = (
        VoiceSpec(id="a", engine=VoiceEngine.FLITE, voice="slt"),
        VoiceSpec(id="b", engine=VoiceEngine.ESPEAK, voice="en-us+m3", pitch=30),
    )
    first = build_corpus(tmp_path, speakers=speakers, train_per_speaker=2, heldout_per_speaker=1)
    paths = [u.wav_path for s in first.speakers for u in (*s.train, *s.heldout)]
    assert len(set(paths)) == 6 and all(path.is_file() for path in paths)
    before = {path: path.stat().st_mtime_ns for path in paths}
    paths[0].unlink()
    second = build_corpus(tmp_path, speakers=speakers, train_per_speaker=2, heldout_per_speaker=1)
    assert second == first
    assert paths[0].is_file()
    for path in paths[1:]:
        assert path.stat().st_mtime_ns == before[path]
    # A different pitch is a different voice: a new file, not the cached one.
    higher = (speakers[0], VoiceSpec(id="b", engine=VoiceEngine.ESPEAK, voice="en-us+m3", pitch=60))
    third = build_corpus(tmp_path, speakers=higher, train_per_speaker=2, heldout_per_speaker=1)
    assert third.speaker("b").train[0].wav_path != first.speaker("b").train[0].wav_path
    assert not list(tmp_path.rglob(".synth-*"))


def test_bad_voices_get_one_line_errors(tmp_path: Path) -> None:
    require_tools()
    with pytest.raises(CorpusError, match="pitch"):
        VoiceSpec(id="x", engine=VoiceEngine.ESPEAK, voice="en-us", pitch=120)
    with pytest.raises(CorpusError, match="espeak-ng"):
        VoiceSpec(id="x", engine=VoiceEngine.FLITE, voice="slt", words_per_minute=150)
    with pytest.raises(CorpusError, match="speaker id"):
        VoiceSpec(id="../x", engine=VoiceEngine.FLITE, voice="slt")
    with pytest.raises(CorpusError, match="flite has no voice nosuch"):
        build_corpus(
            tmp_path,
            speakers=(VoiceSpec(id="x", engine=VoiceEngine.FLITE, voice="nosuch"),),
            train_per_speaker=1,
            heldout_per_speaker=0,
        )
    with pytest.raises(CorpusError, match="espeak-ng voice 'nosuch'") as caught:
        build_corpus(
            tmp_path,
            speakers=(VoiceSpec(id="x", engine=VoiceEngine.ESPEAK, voice="nosuch"),),
            train_per_speaker=1,
            heldout_per_speaker=0,
        )
    assert "\n" not in str(caught.value)
    with pytest.raises(CorpusError, match="unique"):
        build_corpus(
            tmp_path,
            speakers=(DEFAULT_SPEAKERS[0], DEFAULT_SPEAKERS[0]),
            train_per_speaker=1,
            heldout_per_speaker=0,
        )
