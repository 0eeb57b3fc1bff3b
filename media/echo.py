"""Echo cancellation on the capture path, with what the speaker played as the reference.

Theory of operation
-------------------
With speakers instead of headphones, our microphone hears the translated speech we play and
would send it back to the peer, who would hear (and caption) itself. :class:`EchoCanceller`
removes it with WebRTC's audio-processing module (AEC3, plus its high-pass filter), as built
into the ``livekit`` package's FFI library (:class:`livekit.rtc.AudioProcessingModule`).

Why that binding: it is maintained (LiveKit ships it in every release of their Python SDK,
prebuilt wheels for cp311 x86_64/arm64, macOS and Windows: nothing to compile), it is the
current AEC3 rather than the 2012-era AEC that ``webrtc-audio-processing`` 0.1.3 (an sdist last
released in 2019) wraps, and it installs into our venv without changing any package we have
(it adds ``aiofiles`` and ``types-protobuf``). speexdsp's canceller is older and weaker on
reverberant rooms. We use only the module, never LiveKit's network parts.

The module works on 10 ms frames of 16-bit audio. :meth:`EchoCanceller.reference` takes what
was played (16 kHz float, any block size) and :meth:`EchoCanceller.process` what was captured;
both are cut into 10 ms frames here, and each captured frame is processed after every reference
frame that reached us before it (the two calls come from different threads in a live call: the
speaker's callback and the microphone's reader, hence the lock). ``stream_delay_ms`` is the
hint WebRTC asks for (output plus input latency); AEC3 finds the exact delay itself.

With ``enabled=False`` the canceller passes audio through unchanged (frames still 10 ms), so a
call with headphones or ``--out none`` pays nothing and the ERLE measure has its baseline.

:func:`measure_erle` is the echo figure (``erle_db``): our TTS (piper, English) played through a
synthetic room impulse response, near-end speech (espeak-ng, Portuguese) talking over part of
it, and a little noise; ERLE is the energy ratio of microphone to output over the echo-only
parts after the first seconds (convergence).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from media.errors import MediaError
from media.features import SAMPLE_RATE, FloatArray

#: WebRTC's audio-processing module works on 10 ms frames.
FRAME_S: Final = 0.01
FRAME_SAMPLES: Final = round(SAMPLE_RATE * FRAME_S)
_INT16_SCALE: Final = 32767.0


class EchoCancellerError(MediaError):
    """The echo-cancellation module is missing or failed."""


def _apm_class() -> Any:
    try:
        from livekit.rtc import AudioFrame, AudioProcessingModule
    except ImportError as error:
        raise EchoCancellerError(
            f"echo cancellation needs the livekit package (pip install livekit): {error}"
        ) from error
    return AudioProcessingModule, AudioFrame


def _to_int16(samples: FloatArray) -> bytes:
    return bytes(np.clip(np.round(samples * _INT16_SCALE), -32768, 32767).astype("<i2").tobytes())


class EchoCanceller:
    """See the module docstring. 16 kHz mono float32 in and out."""

    def __init__(self, *, enabled: bool = True, stream_delay_ms: int = 0) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._reference = np.zeros(0, dtype=np.float32)
        self._captured = np.zeros(0, dtype=np.float32)
        self._apm: Any = None
        self._frame_class: Any = None
        self.frames_processed = 0
        self.reference_frames = 0
        if enabled:
            apm_class, self._frame_class = _apm_class()
            try:
                self._apm = apm_class(
                    echo_cancellation=True,
                    noise_suppression=False,
                    high_pass_filter=True,
                    auto_gain_control=False,
                )
                self._apm.set_stream_delay_ms(int(stream_delay_ms))
            except Exception as error:  # the FFI library's own failure
                raise EchoCancellerError(f"cannot start echo cancellation: {error}") from error

    def reference(self, played: FloatArray) -> None:
        """What the speaker played (16 kHz); call before the matching capture is processed."""
        if not self.enabled:
            return
        with self._lock:
            self._reference = np.concatenate([self._reference, _mono(played)])
            while self._reference.size >= FRAME_SAMPLES:
                frame, self._reference = (
                    self._reference[:FRAME_SAMPLES],
                    self._reference[FRAME_SAMPLES:],
                )
                self._run(self._apm.process_reverse_stream, frame)
                self.reference_frames += 1

    def device_reference(self, device_rate_hz: int) -> Callable[[FloatArray], None]:
        """A :class:`media.audio_devices.Speaker` ``on_played`` hook: the blocks it plays, at
        the device's rate, resampled to 16 kHz and taken as the reference."""
        from media.audio_devices import StreamResampler

        resampler = StreamResampler(device_rate_hz, SAMPLE_RATE)

        def on_played(block: FloatArray) -> None:
            self.reference(resampler.push(block))

        return on_played

    def process(self, captured: FloatArray) -> FloatArray:
        """The captured audio with the echo removed, in whole 10 ms frames (the rest waits)."""
        with self._lock:
            self._captured = np.concatenate([self._captured, _mono(captured)])
            whole = self._captured.size - self._captured.size % FRAME_SAMPLES
            ready, self._captured = self._captured[:whole], self._captured[whole:]
            if not self.enabled or whole == 0:
                return ready
            out = np.empty_like(ready)
            for start in range(0, whole, FRAME_SAMPLES):
                out[start : start + FRAME_SAMPLES] = self._run(
                    self._apm.process_stream, ready[start : start + FRAME_SAMPLES]
                )
                self.frames_processed += 1
            return out

    def _run(self, method: Any, frame: FloatArray) -> FloatArray:
        audio_frame = self._frame_class(_to_int16(frame), SAMPLE_RATE, 1, FRAME_SAMPLES)
        try:
            method(audio_frame)
        except Exception as error:
            raise EchoCancellerError(f"echo cancellation failed: {error}") from error
        return np.frombuffer(bytes(audio_frame.data), dtype="<i2").astype(np.float32) / (
            _INT16_SCALE
        )


def _mono(samples: FloatArray) -> FloatArray:
    return np.asarray(samples, dtype=np.float32).reshape(-1)


# -- the ERLE measure ----------------------------------------------------------------------

#: Far-end sentences (our synthesized translation) and near-end ones (the local user). The
#: tests use the tuning set; the bench reports on the evaluation set.
TUNING_FAR_TEXTS: Final = (
    "Good morning, I hope the trip was not too long.",
    "The meeting starts at ten, in the room on the second floor.",
    "Please send me the report before Friday.",
)
TUNING_NEAR_TEXT: Final = "Eu chego amanhã de manhã com os documentos."
EVALUATION_FAR_TEXTS: Final = (
    "We finished the garden wall last weekend, just before the rain.",
    "My sister will bring the children to the station at six.",
    "Could you check whether the bakery is open on Sundays?",
    "The new bridge makes the drive to the coast much shorter.",
)
EVALUATION_NEAR_TEXT: Final = "O mercado fecha cedo hoje, então vamos almoçar em casa."


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSettings:
    """The synthetic room: a bulk delay (speaker to microphone, plus the audio path's own
    latency) and an exponentially decaying reverberant tail."""

    delay_s: float = 0.04
    rt60_s: float = 0.3
    length_s: float = 0.25
    echo_gain: float = 0.5
    noise_dbfs: float = -65.0
    seed: int = 14

    def impulse_response(self) -> FloatArray:
        rng = np.random.default_rng(self.seed)
        length = round(self.length_s * SAMPLE_RATE)
        t = np.arange(length) / SAMPLE_RATE
        decay = np.exp(-6.9078 * t / self.rt60_s)  # -60 dB at rt60
        tail = rng.standard_normal(length) * decay * 0.3
        tail[0] = 1.0  # the direct path
        delayed = np.concatenate([np.zeros(round(self.delay_s * SAMPLE_RATE)), tail])
        response: FloatArray = (self.echo_gain * delayed / np.linalg.norm(delayed)).astype(
            np.float32
        )
        return response


@dataclass(frozen=True, slots=True)
class EchoTestSignal:
    far: FloatArray
    microphone: FloatArray
    #: Samples where only the echo (and noise) reaches the microphone.
    echo_only: np.ndarray[Any, np.dtype[np.bool_]]
    #: Samples where the near end talks over the echo.
    double_talk: np.ndarray[Any, np.dtype[np.bool_]]
    near: FloatArray


def _place(parts: Sequence[FloatArray], gap_s: float) -> FloatArray:
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    pieces: list[FloatArray] = []
    for part in parts:
        pieces += [part, gap]
    return np.concatenate(pieces)


def _active(
    signal: FloatArray, threshold_dbfs: float = -45.0
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Where ``signal`` has energy, smoothed over 20 ms."""
    window = np.ones(round(0.02 * SAMPLE_RATE), dtype=np.float32)
    energy = np.convolve(signal.astype(np.float64) ** 2, window / window.size, mode="same")
    mask: np.ndarray[Any, np.dtype[np.bool_]] = energy > 10 ** (threshold_dbfs / 10)
    return mask


def echo_test_signal(
    far_speech: Sequence[FloatArray], near_speech: FloatArray, room: RoomSettings
) -> EchoTestSignal:
    """Far-end speech through the room plus near-end speech starting halfway (16 kHz)."""
    far = _place(far_speech, gap_s=0.6)
    far = np.concatenate([far, np.zeros(SAMPLE_RATE, dtype=np.float32)])
    echo = np.convolve(far, room.impulse_response())[: far.size].astype(np.float32)
    near = np.zeros_like(far)
    start = far.size // 2
    end = min(far.size, start + near_speech.size)
    near[start:end] = near_speech[: end - start]
    rng = np.random.default_rng(room.seed + 1)
    noise = rng.standard_normal(far.size).astype(np.float32) * 10 ** (room.noise_dbfs / 20)
    microphone = (echo + near + noise).astype(np.float32)
    near_active = _active(near)
    echo_active = _active(echo)
    return EchoTestSignal(
        far=far,
        microphone=microphone,
        echo_only=echo_active & ~near_active,
        double_talk=echo_active & near_active,
        near=near,
    )


#: The module's own processing delay is a few ms; the near-end check searches this far.
_MAX_PROCESSING_LAG_S: Final = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class ErleResult:
    erle_db: float
    #: During double talk: the output's correlation with the near-end speech (best lag up to
    #: 20 ms, the module's own delay), i.e. how much of the local user's voice survives (1.0:
    #: all of it, unaltered), and the output's level against the near end's (dB).
    near_end_kept: float
    near_end_level_db: float
    echo_only_s: float
    converge_s: float


def run_canceller(signal: EchoTestSignal, canceller: EchoCanceller) -> FloatArray:
    """Feed the signal through ``canceller`` in 10 ms steps, reference first (as played)."""
    out: list[FloatArray] = []
    for start in range(0, signal.far.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        canceller.reference(signal.far[start : start + FRAME_SAMPLES])
        out.append(canceller.process(signal.microphone[start : start + FRAME_SAMPLES]))
    return np.concatenate(out)


def erle(signal: EchoTestSignal, output: FloatArray, *, converge_s: float) -> ErleResult:
    """ERLE over the echo-only samples after ``converge_s``; near-end kept over double talk."""
    n = output.size
    after = np.arange(n) >= round(converge_s * SAMPLE_RATE)
    echo_only = signal.echo_only[:n] & after
    mic_energy = float(np.sum(signal.microphone[:n][echo_only].astype(np.float64) ** 2))
    out_energy = float(np.sum(output[echo_only].astype(np.float64) ** 2))
    erle_db = 10 * math.log10(mic_energy / max(out_energy, 1e-12))
    talk = signal.double_talk[:n]
    near = signal.near[:n].astype(np.float64)
    out = output.astype(np.float64)
    best = 0.0
    for lag in range(round(_MAX_PROCESSING_LAG_S * SAMPLE_RATE) + 1):
        window = talk[: n - lag]
        a, b = near[: n - lag][window], out[lag:][window]
        denom = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
        best = max(best, float(np.dot(a, b)) / denom)
    near_energy = float(np.sum(near[talk] ** 2))
    level = 10 * math.log10(max(float(np.sum(out[talk] ** 2)), 1e-12) / max(near_energy, 1e-12))
    return ErleResult(
        erle_db=erle_db,
        near_end_kept=best,
        near_end_level_db=level,
        echo_only_s=float(np.sum(echo_only)) / SAMPLE_RATE,
        converge_s=converge_s,
    )


def measure_erle(
    *,
    far_texts: Sequence[str] = EVALUATION_FAR_TEXTS,
    near_text: str = EVALUATION_NEAR_TEXT,
    material: str = "evaluation",
    room: RoomSettings | None = None,
    converge_s: float = 2.0,
) -> dict[str, object]:
    """The echo figure with cancellation on and off, on our TTS (the bench's ``erle_db``)."""
    from media.tts import TtsConfig, select_synthesizer

    chosen_room = room if room is not None else RoomSettings()
    config = TtsConfig()
    english = select_synthesizer("en", config)
    # The near end stays espeak-ng's Portuguese, the voice these figures were tuned and
    # reported with (Kokoro became pt's default voice later; issue 13 follow-up).
    portuguese = select_synthesizer("pt", TtsConfig(backend="espeak-ng"))
    far = [english.synthesize(text).at_rate(SAMPLE_RATE).samples for text in far_texts]
    near = portuguese.synthesize(near_text).at_rate(SAMPLE_RATE).samples
    signal = echo_test_signal(far, near, chosen_room)
    on = erle(signal, run_canceller(signal, EchoCanceller(enabled=True)), converge_s=converge_s)
    off = erle(signal, run_canceller(signal, EchoCanceller(enabled=False)), converge_s=converge_s)
    return {
        "erle_db": round(on.erle_db, 2),
        "erle_db_without_cancellation": round(off.erle_db, 2),
        "near_end_kept": round(on.near_end_kept, 3),
        "near_end_level_db": round(on.near_end_level_db, 2),
        "echo_only_s": round(on.echo_only_s, 2),
        "converge_s": converge_s,
        "signal": {
            "material": material,
            "far_end": "our TTS for English (piper), played through the room",
            "near_end": "espeak-ng pt, talking over the second half",
            "room": {
                "delay_s": chosen_room.delay_s,
                "rt60_s": chosen_room.rt60_s,
                "echo_gain": chosen_room.echo_gain,
                "noise_dbfs": chosen_room.noise_dbfs,
            },
            "duration_s": round(signal.far.size / SAMPLE_RATE, 2),
        },
        "canceller": "WebRTC AEC3 via livekit.rtc.AudioProcessingModule (high-pass on, NS off)",
    }


__all__ = [
    "EVALUATION_FAR_TEXTS",
    "EVALUATION_NEAR_TEXT",
    "TUNING_FAR_TEXTS",
    "TUNING_NEAR_TEXT",
    "EchoCanceller",
    "EchoCancellerError",
    "EchoTestSignal",
    "ErleResult",
    "RoomSettings",
    "echo_test_signal",
    "erle",
    "measure_erle",
    "run_canceller",
]
