"""Sound devices through PortAudio, against a real PulseAudio server the test starts itself."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.audio_devices import (
    AudioDevice,
    AudioDeviceError,
    Direction,
    Microphone,
    PlayoutBuffer,
    Speaker,
    find_device,
    list_devices,
    resample,
)
from simulations.corpus import write_float_wav
from tests.pulse import PulseServer, pulse_environment, pulse_server

RATE = 16_000


def noise_burst(seconds: float, seed: int, rate: int = RATE) -> npt.NDArray[np.float32]:
    """Band-limited noise (a fingerprint that correlates sharply), at -12 dBFS or so."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(round(seconds * rate)).astype(np.float32)
    smooth = np.convolve(raw, np.ones(4, dtype=np.float32) / 4, mode="same")
    return (0.25 * smooth / np.max(np.abs(smooth))).astype(np.float32)


def best_match(
    recording: npt.NDArray[np.float32], signal: npt.NDArray[np.float32]
) -> tuple[int, float]:
    """Where ``signal`` sits in ``recording`` and its normalized correlation there (0..1)."""
    n = recording.size + signal.size
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(signal, size)), size)
    corr = corr[: recording.size - signal.size + 1]
    lag = int(np.argmax(np.abs(corr)))
    window = recording[lag : lag + signal.size]
    denom = float(np.linalg.norm(window) * np.linalg.norm(signal)) or 1.0
    return lag, float(abs(corr[lag]) / denom)


@pytest.fixture
def pulse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseServer]:
    with (
        pulse_server(
            tmp_path, sinks=("mic_feed", "speaker"), microphones={"microphone": "mic_feed"}
        ) as server,
        pulse_environment(monkeypatch, server),
    ):
        monkeypatch.setenv("PULSE_SOURCE", "microphone")
        monkeypatch.setenv("PULSE_SINK", "speaker")
        list_devices(refresh=True)
        yield server
    list_devices(refresh=True)


def test_the_pulse_device_is_listed_and_found_by_name(pulse: PulseServer) -> None:
    devices = list_devices()
    names = [device.name for device in devices]
    assert "pulse" in names
    microphone = find_device("pulse", Direction.INPUT)
    assert microphone.name == "pulse" and microphone.input_channels > 0
    assert find_device(microphone.index, Direction.INPUT) == microphone
    assert find_device(str(microphone.index), Direction.OUTPUT).index == microphone.index


def test_the_microphone_records_what_plays_into_the_virtual_mic(
    pulse: PulseServer, tmp_path: Path
) -> None:
    signal = noise_burst(1.5, seed=1)
    wav = tmp_path / "known.wav"
    padded = np.concatenate(
        [np.zeros(RATE // 4, np.float32), signal, np.zeros(RATE // 4, np.float32)]
    )
    write_float_wav(wav, resample(padded, RATE, 48_000), 48_000)
    device = find_device("pulse", Direction.INPUT)
    captured: list[npt.NDArray[np.float32]] = []
    stamps: list[tuple[float, int]] = []
    with Microphone(device) as microphone:
        time.sleep(0.3)
        player = pulse.play_file("mic_feed", wav)
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            samples, captured_at = microphone.read_timed(0.1)
            if captured_at is not None:
                stamps.append((captured_at, sum(c.size for c in captured)))
                assert captured_at <= time.monotonic()
            captured.append(samples)
        assert player.wait(timeout=10) == 0
        overruns = microphone.overruns
    recording = np.concatenate(captured)
    assert microphone.device_rate_hz == round(device.default_rate_hz)
    # Capture times advance with the audio: each read starts where the previous one ended.
    for (earlier, earlier_at), (later, later_at) in itertools.pairwise(stamps):
        assert later - earlier == pytest.approx((later_at - earlier_at) / RATE, abs=0.03)
    lag, correlation = best_match(recording, signal)
    assert correlation > 0.9, f"the known signal did not arrive (correlation {correlation:.2f})"
    assert lag > 0
    assert overruns == 0


def test_input_overruns_are_counted_when_nobody_reads(pulse: PulseServer, tmp_path: Path) -> None:
    # A null sink's monitor only carries audio while something plays into it (a real
    # microphone always does), so the virtual mic is fed while nobody reads it.
    wav = tmp_path / "feed.wav"
    write_float_wav(wav, resample(noise_burst(3.5, seed=4), RATE, 48_000), 48_000)
    device = find_device("pulse", Direction.INPUT)
    player = pulse.play_file("mic_feed", wav)
    try:
        with Microphone(device, block_s=0.02, max_queued_s=0.04) as microphone:
            # The ALSA pulse capture path delivers its first block after about a second here.
            deadline = time.monotonic() + 3.0
            while microphone.overruns == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert microphone.overruns > 0
            assert microphone.read(0.1).size > 0
    finally:
        player.wait(timeout=10)


def test_the_speaker_plays_utterances_in_order_without_overlap(
    pulse: PulseServer, tmp_path: Path
) -> None:
    first = noise_burst(0.6, seed=2)
    second_22k = noise_burst(0.5, seed=3, rate=22_050)  # piper's rate, resampled on the way
    playout = PlayoutBuffer(sample_rate_hz=48_000)
    device = find_device("pulse", Direction.OUTPUT)
    recorder = pulse.record("speaker.monitor", RATE, tmp_path / "speaker.f32")
    try:
        with Speaker(device, playout) as speaker:
            playout.add(1, first, rate_hz=RATE)
            half = second_22k.size // 2
            playout.add(2, second_22k[:half], rate_hz=22_050, final=False)
            playout.add(2, second_22k[half:], rate_hz=22_050, final=True)
            assert speaker.drain(timeout_s=10)
            time.sleep(0.3)
    finally:
        recording = recorder.stop()
    second = resample(second_22k, 22_050, RATE)
    lag_first, corr_first = best_match(recording, first)
    lag_second, corr_second = best_match(recording, second)
    assert corr_first > 0.9 and corr_second > 0.9, (corr_first, corr_second)
    # In order, back to back: the second starts where the first ends (within a few ms).
    assert abs(lag_second - (lag_first + first.size)) < RATE * 0.005
    assert playout.underruns == 0
    assert [p.utterance_id for p in playout.started] == [1, 2]
    first_heard, second_heard = (p.heard_at_s for p in playout.started)
    assert first_heard is not None and second_heard is not None
    assert second_heard - first_heard == pytest.approx(first.size / RATE, abs=0.005)


def test_playout_buffer_plays_in_order_and_counts_only_mid_utterance_gaps() -> None:
    playout = PlayoutBuffer(sample_rate_hz=RATE)
    assert np.all(playout.pull(100) == 0) and playout.underruns == 0  # idle: not an underrun
    a = np.full(150, 0.1, np.float32)
    b = np.full(100, 0.2, np.float32)
    playout.add(7, a, rate_hz=RATE)
    playout.add(8, b[:50], rate_hz=RATE, final=False)
    out = np.concatenate([playout.pull(120), playout.pull(120)])
    assert np.array_equal(out[:150], a) and np.array_equal(out[150:200], b[:50])
    assert np.all(out[200:] == 0)
    assert playout.underruns == 1  # utterance 8 started and its rest is late
    playout.add(8, b[50:], rate_hz=RATE, final=True)
    assert np.array_equal(playout.pull(50), b[50:])
    assert playout.idle()
    assert [(p.utterance_id, p.first_sample) for p in playout.started] == [(7, 100), (8, 250)]
    with pytest.raises(ValueError, match="already finished"):
        playout.add(7, a, rate_hz=RATE)


def test_playout_dates_each_utterance_start_for_mouth_to_ear() -> None:
    playout = PlayoutBuffer(sample_rate_hz=RATE)
    playout.add(1, np.full(RATE // 10, 0.1, np.float32), rate_hz=RATE)
    playout.pull(RATE // 20, block_heard_at_s=50.0)  # starts at the block's first sample
    playout.add(2, np.full(RATE // 10, 0.2, np.float32), rate_hz=RATE)
    playout.pull(RATE // 10, block_heard_at_s=50.05)  # 1 ends 50 ms in, 2 starts right then
    assert [(p.utterance_id, p.heard_at_s) for p in playout.started] == [
        (1, 50.0),
        (2, pytest.approx(50.1)),
    ]


def _devices() -> list[AudioDevice]:
    return [
        AudioDevice(
            index=0,
            name="HDA Intel: ALC892 Analog",
            host_api="ALSA",
            input_channels=2,
            output_channels=2,
            default_rate_hz=44_100.0,
            default_input=True,
            default_output=True,
        ),
        AudioDevice(
            index=1,
            name="HDA Intel: HDMI 0",
            host_api="ALSA",
            input_channels=0,
            output_channels=8,
            default_rate_hz=48_000.0,
            default_input=False,
            default_output=False,
        ),
        AudioDevice(
            index=2,
            name="USB Headset",
            host_api="ALSA",
            input_channels=1,
            output_channels=2,
            default_rate_hz=48_000.0,
            default_input=False,
            default_output=False,
        ),
    ]


def test_a_missing_or_ambiguous_device_is_one_line_naming_it() -> None:
    devices = _devices()
    assert find_device(None, Direction.INPUT, devices=devices).index == 0
    assert find_device("headset", Direction.INPUT, devices=devices).index == 2
    assert find_device("hdmi", Direction.OUTPUT, devices=devices).index == 1
    with pytest.raises(AudioDeviceError, match="no input sound device named 'hdmi'"):
        find_device("hdmi", Direction.INPUT, devices=devices)
    with pytest.raises(AudioDeviceError, match="'HDA' is ambiguous"):
        find_device("HDA", Direction.OUTPUT, devices=devices)
    with pytest.raises(AudioDeviceError, match="no output sound device with index 9"):
        find_device(9, Direction.OUTPUT, devices=devices)


def test_opening_a_device_that_cannot_open_names_it(pulse: PulseServer) -> None:
    device = find_device("pulse", Direction.INPUT)
    impossible = Microphone(device, rate_hz=1)  # no sound server takes 1 Hz
    with pytest.raises(AudioDeviceError, match="cannot open input device 'pulse'"):
        impossible.open()


def test_devices_command_lists_them_as_json(pulse: PulseServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "devices", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert any(d["name"] == "pulse" and d["input_channels"] > 0 for d in listed)


def test_echo_through_real_devices_is_cancelled_with_the_playout_as_reference(
    pulse: PulseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Speaker and microphone on one sound server, the speaker's sink feeding the microphone:
    the acoustic loop of a laptop without headphones, with the real devices' own latency."""
    from media.echo import EchoCanceller

    monkeypatch.setenv("PULSE_SINK", "mic_feed")  # what we play, the microphone hears
    list_devices(refresh=True)
    device = find_device("pulse", Direction.OUTPUT)
    far = np.concatenate([noise_burst(0.8, seed=s) for s in (5, 6, 7, 8, 9, 10)])
    results: dict[bool, float] = {}
    for enabled in (False, True):
        canceller = EchoCanceller(enabled=enabled)
        playout = PlayoutBuffer(sample_rate_hz=48_000)
        captured: list[npt.NDArray[np.float32]] = []
        with (
            Microphone(find_device("pulse", Direction.INPUT)) as microphone,
            Speaker(device, playout, on_played=canceller.device_reference(48_000)) as speaker,
        ):
            time.sleep(1.5)  # the capture path starts late here (see tests/pulse.py)
            microphone.read(0.0)
            playout.add(1, far, rate_hz=RATE)
            deadline = time.monotonic() + far.size / RATE + 1.0
            while time.monotonic() < deadline:
                captured.append(canceller.process(microphone.read(0.1)))
            assert speaker.drain(timeout_s=5)
        out = np.concatenate(captured)
        tail = out[2 * RATE :]  # after convergence
        results[enabled] = float(np.sum(tail.astype(np.float64) ** 2))
    erle_db = 10 * np.log10(results[False] / max(results[True], 1e-12))
    assert results[False] > 1.0, "no echo reached the microphone: the loop is broken"
    assert erle_db > 15.0, f"ERLE through the devices only {erle_db:.1f} dB"
