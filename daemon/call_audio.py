"""Where a call's audio comes from and goes to: ``mic``/FILE/``none`` in, ``speaker``/``none`` out.

An input spec (``parley call --in``, config ``call.input``) is ``mic`` (the default input
device), ``mic:NAME`` or ``mic:INDEX`` (a device by name, part of a name or index, as
``parley devices`` lists them), ``none`` (we only listen), or a recording, played into the
call at real time. A missing or busy device is one :class:`media.errors.MediaError` line
naming it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio

from daemon.call_dialing import measure_voice
from daemon.call_session import AudioSource, FileSource
from media.asr import FeatureTranscriber
from media.audio import load_audio
from media.audio_devices import Direction, Microphone, PlayoutBuffer, Speaker, find_device
from media.call_receiver import SpeechPiece
from media.echo import EchoCanceller
from schemas.messages import VoiceTraits

__all__ = [
    "MIC",
    "NONE",
    "SPEAKER",
    "MicSource",
    "Playout",
    "input_device_spec",
    "open_input",
    "open_output",
]

MIC = "mic"
SPEAKER = "speaker"
NONE = "none"
#: Our voice when we cannot measure it (out of range: the listener uses its default voice).
UNKNOWN_VOICE = VoiceTraits(median_pitch_hz=0.0, speaking_rate_wps=0.0)


def input_device_spec(spec: str) -> str | None:
    """The device part of ``mic`` / ``mic:NAME`` (None: the default device); not a mic: error."""
    if spec == MIC:
        return None
    if spec.startswith(MIC + ":") and spec[len(MIC) + 1 :].strip():
        return spec[len(MIC) + 1 :].strip()
    raise ValueError(f"{spec!r} is not a microphone spec")


class MicSource:
    """A microphone as a call's audio source (16 kHz chunks as they are captured).

    With ``canceller``, each block goes through echo cancellation first (the speaker's
    playout is its reference). ``on_level`` hears the level (dBFS) of each block.
    """

    def __init__(
        self,
        microphone: Microphone,
        *,
        canceller: EchoCanceller | None = None,
        on_level: Callable[[float], None] | None = None,
    ) -> None:
        self.microphone = microphone
        self._canceller = canceller
        self.on_level = on_level

    async def chunks(self) -> AsyncGenerator[npt.NDArray[np.float32], None]:
        self.microphone.open()
        try:
            while True:
                samples = await trio.to_thread.run_sync(self.microphone.read, 0.1)
                if not samples.shape[0]:
                    continue
                if self._canceller is not None:
                    samples = self._canceller.process(samples)
                if self.on_level is not None:
                    rms = float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0
                    self.on_level(20 * math.log10(max(rms, 1e-6)))
                yield samples
        finally:
            self.microphone.close()


async def open_input(
    spec: str,
    *,
    batch_ms: int,
    transcriber: Callable[[], FeatureTranscriber],
    canceller: EchoCanceller | None = None,
    on_level: Callable[[float], None] | None = None,
    then_silence: bool = False,
) -> tuple[AudioSource | None, VoiceTraits]:
    """The source ``spec`` names and our voice traits (measured on a file; unknown on a mic).
    ``then_silence``: a recording is followed by silence until the call ends (the callee).

    Raises MediaError (a missing device, an unreadable file) or CallError (no speech).
    """
    if spec == NONE:
        return None, UNKNOWN_VOICE
    if spec == MIC or spec.startswith(MIC + ":"):
        device = await trio.to_thread.run_sync(
            find_device, input_device_spec(spec), Direction.INPUT
        )
        return MicSource(Microphone(device), canceller=canceller, on_level=on_level), UNKNOWN_VOICE
    path = Path(spec).expanduser()
    audio = await trio.to_thread.run_sync(load_audio, path)
    voice = await trio.to_thread.run_sync(lambda: measure_voice(audio, transcriber()))
    return FileSource(audio, batch_ms=batch_ms, then_silence=then_silence), voice


class Playout:
    """The other side's translated speech on our speaker: utterances in order, never
    overlapping (:class:`media.audio_devices.PlayoutBuffer`), underruns counted; with an echo
    canceller, what plays is its reference. ``clock_offset_s`` turns the speaker's audio time
    into our monotonic clock (their stream started when their ``CallStart`` arrived), so each
    utterance's mouth-to-ear delay is measured where it is heard."""

    def __init__(self, buffer: PlayoutBuffer, speaker: Speaker | None = None) -> None:
        #: ``speaker`` None: the caller pulls ``buffer`` itself at real time (a bench's
        #: stand-in for a sound device; the playout logic is the same).
        self.buffer = buffer
        self.speaker = speaker
        self._next_id = 0
        self._speech_ends: dict[int, float] = {}
        #: The listener's utterance ids (per listener) -> ours (one sequence per playout).
        self._ids: dict[int, int] = {}
        self.clock_offset_s: float | None = None
        self.mouth_to_ear_s: list[float] = []

    @property
    def underruns(self) -> int:
        """Utterances that ran dry mid-way (the next piece of speech came late)."""
        return self.buffer.underruns

    @property
    def device_underruns(self) -> int:
        """Blocks the sound device reported as late (PortAudio's output underflow flag; the
        ALSA ``pulse`` plugin raises it when the process is starved of CPU): counted apart."""
        return self.speaker.device_underruns if self.speaker is not None else 0

    def play(self, piece: SpeechPiece) -> None:
        """Queue a piece of an utterance (called from the listener's worker thread); the
        pieces of one utterance play back to back, utterances in the order they began."""
        if piece.utterance_id not in self._ids:
            self._next_id += 1
            self._ids[piece.utterance_id] = self._next_id
            self._speech_ends[self._next_id] = piece.speech_end_s
        ours = self._ids[piece.utterance_id]
        if piece.final:
            del self._ids[piece.utterance_id]
        self.buffer.add(ours, piece.samples, rate_hz=piece.sample_rate, final=piece.final)

    def measured(self) -> list[float]:
        """Mouth-to-ear of every utterance heard so far (seconds)."""
        if self.clock_offset_s is None:
            return []
        heard = [
            played.heard_at_s - (self.clock_offset_s + self._speech_ends[played.utterance_id])
            for played in self.buffer.started
            if played.heard_at_s is not None and played.utterance_id in self._speech_ends
        ]
        self.mouth_to_ear_s = heard
        return heard

    def figures(self) -> dict[str, object]:
        """What the call's ``summary.json`` says about our speaker."""
        return {
            "underruns": self.underruns,
            "device_underruns": self.device_underruns,
            "mouth_to_ear_s": [round(delay, 3) for delay in self.measured()],
        }

    def close(self) -> None:
        if self.speaker is not None:
            self.speaker.drain(timeout_s=2.0)
            self.speaker.close()


def output_device_spec(spec: str) -> str | None:
    """The device part of ``speaker`` / ``speaker:NAME`` (None: the default device)."""
    if spec == SPEAKER:
        return None
    if spec.startswith(SPEAKER + ":") and spec[len(SPEAKER) + 1 :].strip():
        return spec[len(SPEAKER) + 1 :].strip()
    raise ValueError(f"{spec!r} is not a speaker spec")


async def open_output(spec: str, *, canceller: EchoCanceller | None = None) -> Playout | None:
    """The speaker ``spec`` names, opened (None for ``none``); raises MediaError naming a
    missing or busy device."""
    if spec == NONE:
        return None
    device = await trio.to_thread.run_sync(find_device, output_device_spec(spec), Direction.OUTPUT)
    rate = round(device.default_rate_hz)
    on_played = canceller.device_reference(rate) if canceller is not None else None
    buffer = PlayoutBuffer(sample_rate_hz=rate)
    speaker = Speaker(device, buffer, on_played=on_played)
    await trio.to_thread.run_sync(speaker.open)
    return Playout(buffer, speaker)
