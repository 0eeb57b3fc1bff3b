"""Microphones and speakers through PortAudio (``sounddevice``), at the call's 16 kHz.

Theory of operation
-------------------
PortAudio runs each open stream's callback on a thread of its own. The callbacks here only copy
blocks in or out; everything else happens on the caller's side of a bounded queue (input) or a
:class:`PlayoutBuffer` (output), so a call's trio shell reads the microphone with
``trio.to_thread.run_sync(microphone.read, ...)`` and feeds the speaker with
:meth:`PlayoutBuffer.add` from anywhere.

* Input (:class:`Microphone`): the device's own rate and channel count, mixed to mono and
  resampled to 16 kHz (libswresample through PyAV, as :mod:`media.audio` does for files) on the
  reader's thread. An *overrun* is a block lost: PortAudio's ``input_overflow`` flag, or a block
  the reader did not take before the queue (``max_queued_s``) filled.
* Output (:class:`Speaker` + :class:`PlayoutBuffer`): utterances (synthesized translations) play
  in the order they were added, one after the other, never mixed. An utterance may arrive in
  pieces; an *underrun* is the device asking for samples in the middle of an utterance whose
  next piece has not arrived (silence is played instead). Silence *between* utterances is not an
  underrun. PortAudio's own ``output_underflow`` flags are counted apart
  (:attr:`Speaker.device_underruns`). What was played goes to ``on_played``: the echo
  canceller's reference (:mod:`media.echo`).

A device is chosen by index or by name (:func:`find_device`): an exact name first, then a unique
part of one. A missing, ambiguous or busy device is an :class:`AudioDeviceError` whose message
is the one line a user sees, naming the device.

The device list is read when PortAudio starts; :func:`list_devices` with ``refresh=True``
restarts it (sound servers started later, a headset plugged in).
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Final, Self

import av
import numpy as np

from common.closing import ClosedOnExit
from media.errors import MediaError
from media.features import SAMPLE_RATE, FloatArray

#: A PortAudio block: 20 ms, the echo canceller's frame is 10 ms.
DEFAULT_BLOCK_S: Final = 0.02
#: The output buffer PortAudio is asked for (a speaker). Its "low" default gave the ALSA
#: ``pulse`` device 40 ms, and a node's callbacks (Python, sharing the GIL with the call's
#: other threads) come later than that on a busy 2-core box: the device underflowed hundreds of
#: times per call and each recovery dropped what the plugin held, so the far end heard words
#: cut off (tests/test_two_way_device_nodes.py: "Can you pass?" of "Can you pass me the salt,
#: please?"). 0.2 s (PortAudio grants 0.18 s there) absorbs those stalls; it adds about that
#: much to mouth-to-ear. ("high" was no better: 0.035 s asked, 0.04 s granted.) A microphone
#: keeps "low": its blocks' capture times stay exact (tests/test_audio_devices.py) and its lost
#: blocks are counted as overruns.
OUTPUT_LATENCY_S: Final = 0.2
#: Captured audio the reader may leave unread before blocks are dropped (and counted).
DEFAULT_MAX_QUEUED_S: Final = 2.0


class AudioDeviceError(MediaError):
    """A sound device is missing, ambiguous, busy, or PortAudio itself is unavailable."""


class Direction(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    input_channels: int
    output_channels: int
    default_rate_hz: float
    default_input: bool
    default_output: bool

    def channels(self, direction: Direction) -> int:
        return self.input_channels if direction is Direction.INPUT else self.output_channels

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "name": self.name,
            "host_api": self.host_api,
            "input_channels": self.input_channels,
            "output_channels": self.output_channels,
            "default_rate_hz": self.default_rate_hz,
            "default_input": self.default_input,
            "default_output": self.default_output,
        }


def _sounddevice() -> ModuleType:
    """The ``sounddevice`` module; a missing PortAudio library is one line saying what to do."""
    try:
        import sounddevice
    except OSError as error:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise AudioDeviceError(
            f"PortAudio is not available ({error}); on Debian: apt-get install libportaudio2"
        ) from error
    module: ModuleType = sounddevice
    return module


def list_devices(*, refresh: bool = False) -> list[AudioDevice]:
    """Every device PortAudio sees, in its index order.

    ``refresh`` restarts PortAudio to see devices that appeared since it started; it closes
    every open stream, so only refresh while no :class:`Microphone` or :class:`Speaker` is open.
    """
    sd = _sounddevice()
    if refresh:
        # sounddevice's documented way to re-scan (its FAQ): restart PortAudio.
        sd._terminate()
        sd._initialize()
    try:
        raw_devices = sd.query_devices()
        host_apis = sd.query_hostapis()
        default_input, default_output = sd.default.device
    except sd.PortAudioError as error:
        raise AudioDeviceError(f"cannot list sound devices: {error}") from error
    devices = []
    for index, raw in enumerate(raw_devices):
        devices.append(
            AudioDevice(
                index=index,
                name=str(raw["name"]),
                host_api=str(host_apis[raw["hostapi"]]["name"]),
                input_channels=int(raw["max_input_channels"]),
                output_channels=int(raw["max_output_channels"]),
                default_rate_hz=float(raw["default_samplerate"]),
                default_input=index == default_input,
                default_output=index == default_output,
            )
        )
    return devices


def find_device(
    spec: str | int | None, direction: Direction, *, devices: list[AudioDevice] | None = None
) -> AudioDevice:
    """The device ``spec`` names (an index, a name or a unique part of one; None: the default)."""
    candidates = [
        d for d in (devices if devices is not None else list_devices()) if d.channels(direction)
    ]
    kind = direction.value
    if not candidates:
        raise AudioDeviceError(f"no {kind} sound device found")
    if spec is None:
        for device in candidates:
            if device.default_input if direction is Direction.INPUT else device.default_output:
                return device
        return candidates[0]
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for device in candidates:
            if device.index == index:
                return device
        raise AudioDeviceError(f"no {kind} sound device with index {index}")
    wanted = spec.strip().casefold()
    exact = [d for d in candidates if d.name.casefold() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in candidates if wanted in d.name.casefold()]
    if len(partial) == 1:
        return partial[0]
    names = ", ".join(repr(d.name) for d in (partial or candidates)[:8])
    if partial:
        raise AudioDeviceError(f"{kind} device {spec!r} is ambiguous: it matches {names}")
    raise AudioDeviceError(f"no {kind} sound device named {spec!r} (there are: {names})")


class StreamResampler:
    """Mono float32 from one rate to another, block by block, without clicks at the seams."""

    def __init__(self, from_rate_hz: int, to_rate_hz: int) -> None:
        self.from_rate_hz = from_rate_hz
        self.to_rate_hz = to_rate_hz
        self._resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=to_rate_hz)
            if from_rate_hz != to_rate_hz
            else None
        )

    def push(self, samples: FloatArray) -> FloatArray:
        block = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if self._resampler is None or block.size == 0:
            return block.copy()
        frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
        frame.sample_rate = self.from_rate_hz
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> FloatArray:
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> FloatArray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


def resample(samples: FloatArray, from_rate_hz: int, to_rate_hz: int) -> FloatArray:
    """A whole signal from one rate to another."""
    resampler = StreamResampler(from_rate_hz, to_rate_hz)
    return np.concatenate([resampler.push(samples), resampler.flush()])


class _DeviceStream(ClosedOnExit):
    """One PortAudio stream of mono float32 blocks on one device: :meth:`open` starts it,
    :meth:`close` stops it; ``with`` does both."""

    #: "input" (an InputStream) or "output" (an OutputStream).
    _latency: float | str = "low"
    _direction: ClassVar[str]
    device: AudioDevice
    _block: int
    _stream: Any

    @property
    def _stream_rate_hz(self) -> float:
        raise NotImplementedError

    def _callback(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        raise NotImplementedError

    def open(self) -> None:
        sd = _sounddevice()
        make = sd.InputStream if self._direction == "input" else sd.OutputStream
        try:
            self._stream = make(
                device=self.device.index,
                samplerate=self._stream_rate_hz,
                blocksize=self._block,
                channels=1,
                dtype="float32",
                latency=self._latency,
                callback=self._callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            self._stream = None
            raise AudioDeviceError(
                f"cannot open {self._direction} device {self.device.name!r}"
                f" (index {self.device.index}): {error}"
            ) from error

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()

    def __enter__(self) -> Self:
        self.open()
        return self


class Microphone(_DeviceStream):
    """Captures from an input device; :meth:`read` returns 16 kHz mono float32."""

    _direction = "input"

    def __init__(
        self,
        device: AudioDevice,
        *,
        block_s: float = DEFAULT_BLOCK_S,
        max_queued_s: float = DEFAULT_MAX_QUEUED_S,
        rate_hz: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if device.input_channels < 1:
            raise AudioDeviceError(f"{device.name!r} has no input channels")
        self.device = device
        self.device_rate_hz = rate_hz if rate_hz is not None else round(device.default_rate_hz)
        self._block = max(1, round(block_s * self.device_rate_hz))
        #: Each block with the time its first sample was captured, on ``clock``.
        self._blocks: queue.Queue[tuple[FloatArray, float]] = queue.Queue(
            maxsize=max(1, round(max_queued_s / block_s))
        )
        self._clock = clock
        self._resampler = StreamResampler(self.device_rate_hz, SAMPLE_RATE)
        self._overruns = 0
        self._lock = threading.Lock()
        self._stream: Any = None

    @property
    def overruns(self) -> int:
        with self._lock:
            return self._overruns

    @property
    def _stream_rate_hz(self) -> float:
        return self.device_rate_hz

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        lost = 1 if status.input_overflow else 0
        # PortAudio dates the block's first sample at the ADC on its stream clock.
        since_captured_s = float(time_info.currentTime) - float(time_info.inputBufferAdcTime)
        if not 0.0 <= since_captured_s < 5.0:  # a host API that leaves the times at zero
            since_captured_s = frames / self.device_rate_hz
        captured_at_s = self._clock() - since_captured_s
        try:
            self._blocks.put_nowait((np.array(indata[:, 0], dtype=np.float32), captured_at_s))
        except queue.Full:
            lost += 1
        if lost:
            with self._lock:
                self._overruns += lost

    def read(self, timeout_s: float = 0.1) -> FloatArray:
        """Everything captured since the last read, at 16 kHz (waits up to ``timeout_s``)."""
        return self.read_timed(timeout_s)[0]

    def read_timed(self, timeout_s: float = 0.1) -> tuple[FloatArray, float | None]:
        """:meth:`read`, with when the first of those samples was captured (on ``clock``; None
        when nothing came). The resampler's own delay, a few samples, is not counted."""
        blocks: list[tuple[FloatArray, float]] = []
        try:
            blocks.append(self._blocks.get(timeout=timeout_s))
            while True:
                blocks.append(self._blocks.get_nowait())
        except queue.Empty:
            pass
        if not blocks:
            return np.zeros(0, dtype=np.float32), None
        samples = self._resampler.push(np.concatenate([block for block, _ in blocks]))
        return samples, blocks[0][1]


@dataclass(slots=True)
class _Utterance:
    utterance_id: int
    pieces: deque[FloatArray] = field(default_factory=deque)
    final: bool = False
    started_at: int | None = None


@dataclass(frozen=True, slots=True)
class PlayedUtterance:
    """An utterance that started playing: ``first_sample`` counts samples since the first pull;
    ``heard_at_s`` is when its first sample reaches the speaker on the clock the puller passed
    (the mouth-to-ear measure's end point), None when the puller passed no clock."""

    utterance_id: int
    first_sample: int
    heard_at_s: float | None = None


class PlayoutBuffer:
    """Utterances in, one continuous output signal out (thread-safe; see the module docstring).

    ``sample_rate_hz`` is the output device's rate; :meth:`add` resamples to it.
    """

    def __init__(self, *, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._lock = threading.Lock()
        self._utterances: deque[_Utterance] = deque()
        self._open: dict[int, tuple[_Utterance, StreamResampler]] = {}
        self._position = 0
        self._underruns = 0
        self._started: list[PlayedUtterance] = []

    def add(
        self, utterance_id: int, samples: FloatArray, *, rate_hz: int, final: bool = True
    ) -> None:
        """Queue (a piece of) an utterance; pieces of one utterance share its id."""
        with self._lock:
            entry = self._open.get(utterance_id)
        if entry is None:
            utterance = _Utterance(utterance_id)
            resampler = StreamResampler(rate_hz, self.sample_rate_hz)
            with self._lock:
                if any(u.utterance_id == utterance_id for u in self._utterances) or any(
                    p.utterance_id == utterance_id for p in self._started
                ):
                    raise ValueError(f"utterance {utterance_id} is already finished")
                self._open[utterance_id] = (utterance, resampler)
                self._utterances.append(utterance)
        else:
            utterance, resampler = entry
        if resampler.from_rate_hz != rate_hz:
            raise ValueError(f"utterance {utterance_id} changed rate mid-way")
        converted = resampler.push(samples)
        tail = resampler.flush() if final else np.zeros(0, dtype=np.float32)
        with self._lock:
            for piece in (converted, tail):
                if piece.size:
                    utterance.pieces.append(piece)
            if final:
                utterance.final = True
                del self._open[utterance_id]

    def pull(self, frames: int, *, block_heard_at_s: float | None = None) -> FloatArray:
        """The next ``frames`` samples for the device (silence where there is nothing).

        ``block_heard_at_s``: when the block's first sample will be heard (the device callback's
        clock plus the output latency); dates :attr:`started`.
        """
        out = np.zeros(frames, dtype=np.float32)
        filled = 0
        with self._lock:
            while filled < frames and self._utterances:
                current = self._utterances[0]
                if current.started_at is None:
                    if not current.pieces and current.final:
                        self._utterances.popleft()  # nothing to play (a text without sound)
                        continue
                    if not current.pieces:
                        break  # nothing of it yet: silence between utterances
                    current.started_at = self._position + filled
                    heard_at = (
                        block_heard_at_s + filled / self.sample_rate_hz
                        if block_heard_at_s is not None
                        else None
                    )
                    self._started.append(
                        PlayedUtterance(current.utterance_id, current.started_at, heard_at)
                    )
                if not current.pieces:
                    if current.final:
                        self._utterances.popleft()
                        continue
                    self._underruns += 1  # mid-utterance and its next piece is late
                    break
                piece = current.pieces[0]
                take = min(frames - filled, piece.size)
                out[filled : filled + take] = piece[:take]
                filled += take
                if take == piece.size:
                    current.pieces.popleft()
                    if not current.pieces and current.final:
                        self._utterances.popleft()
                else:
                    current.pieces[0] = piece[take:]
            self._position += frames
        return out

    @property
    def underruns(self) -> int:
        with self._lock:
            return self._underruns

    @property
    def started(self) -> list[PlayedUtterance]:
        with self._lock:
            return list(self._started)

    def pending_s(self) -> float:
        """Audio queued and not yet played."""
        with self._lock:
            samples = sum(p.size for u in self._utterances for p in u.pieces)
        return samples / self.sample_rate_hz

    def idle(self) -> bool:
        """Nothing queued, nothing open."""
        with self._lock:
            return not self._utterances


class Speaker(_DeviceStream):
    """Plays a :class:`PlayoutBuffer` on an output device (mono, the device's rate)."""

    _direction = "output"
    _latency = OUTPUT_LATENCY_S

    def __init__(
        self,
        device: AudioDevice,
        playout: PlayoutBuffer,
        *,
        block_s: float = DEFAULT_BLOCK_S,
        on_played: Callable[[FloatArray], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if device.output_channels < 1:
            raise AudioDeviceError(f"{device.name!r} has no output channels")
        self.device = device
        self.playout = playout
        self._block = max(1, round(block_s * playout.sample_rate_hz))
        self._on_played = on_played
        #: ``PlayoutBuffer.started`` is dated on this clock (plus PortAudio's output latency).
        self._clock = clock
        self._device_underruns = 0
        self._lock = threading.Lock()
        self._stream: Any = None

    @property
    def device_underruns(self) -> int:
        with self._lock:
            return self._device_underruns

    @property
    def _stream_rate_hz(self) -> float:
        return self.playout.sample_rate_hz

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow:
            with self._lock:
                self._device_underruns += 1
        # PortAudio says when this block reaches the DAC, on its stream clock; the gap to "now"
        # on that clock moves it onto ours. (The callback's own time is no guide: PortAudio
        # fills the device buffer with several callbacks in a row at the start.)
        until_heard_s = float(time_info.outputBufferDacTime) - float(time_info.currentTime)
        if not 0.0 <= until_heard_s < 5.0:  # a host API that leaves the times at zero
            stream = self._stream
            until_heard_s = float(stream.latency) if stream is not None else 0.0
        block = self.playout.pull(frames, block_heard_at_s=self._clock() + until_heard_s)
        outdata[:, 0] = block
        if self._on_played is not None:
            self._on_played(block)

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued has played (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while not self.playout.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        # The last block is still in the device's buffer.
        time.sleep(self._block / self.playout.sample_rate_hz * 3)
        return True


__all__ = [
    "AudioDevice",
    "AudioDeviceError",
    "Direction",
    "Microphone",
    "PlayedUtterance",
    "PlayoutBuffer",
    "Speaker",
    "StreamResampler",
    "find_device",
    "list_devices",
    "resample",
]
