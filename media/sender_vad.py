"""Voice activity at the sender: the Silero VAD that faster-whisper ships, run on the waveform.

The caller has the waveform, which is a far better place to judge speech than the listener's
codec-decoded log-mel frames (:mod:`media.vad`). faster-whisper ships Silero VAD v6 as ONNX
(``faster_whisper/assets/silero_vad_v6.onnx``) and runs it in batch over a whole file; this
module runs the same network live.

Theory of operation:

- The network reads 512 samples (32 ms at 16 kHz) with the previous 64 samples in front as
  context, and carries an LSTM state ``(h, c)`` from window to window. faster-whisper's batch
  call feeds all windows as one sequence from a zero state with the same context rule, so one
  window at a time with the state carried gives the same probabilities (a test checks it
  against ``SileroVADModel``).
- Decisions follow faster-whisper's ``get_speech_timestamps`` hysteresis: speech starts at a
  window whose probability reaches ``threshold``; it ends once the probability has stayed below
  ``threshold - 0.15`` for ``min_silence_s``, at the first of those quiet windows.
- Cost: about 3 ms of one core per second of audio (measured on the 2-core box under load),
  nothing next to the codec.

Sans-IO: :meth:`SileroStreamingVad.push` takes samples and returns the speech start/end events
they complete, with sample positions from the stream start.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from media.errors import MediaError

WINDOW_SAMPLES: Final = 512
CONTEXT_SAMPLES: Final = 64
STATE_SHAPE: Final = (1, 1, 128)
#: faster-whisper's gap between the start and the stop threshold.
HYSTERESIS: Final = 0.15


class SenderVadError(MediaError):
    """The Silero model is missing or cannot be loaded."""


def silero_model_path() -> Path:
    """The ONNX file faster-whisper ships."""
    import faster_whisper

    return Path(faster_whisper.__file__).resolve().parent / "assets" / "silero_vad_v6.onnx"


@dataclass(frozen=True, kw_only=True)
class SenderVadSettings:
    threshold: float = 0.5
    #: Quiet that ends the speech. With DTX (:mod:`media.call_sender`) this is where a
    #: talkspurt ends and its end mark finalizes the listener's utterance, so it must bridge
    #: the pauses inside a sentence as the listener's own rule does (0.2 s hangover + 0.5 s):
    #: at 0.3 s the mark fell at commas and the listener committed the first half without
    #: its right context (issue 16, tests/test_dtx_pauses.py). faster-whisper's batch
    #: default is 2 s, which would send far more silence.
    min_silence_s: float = 0.6

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and HYSTERESIS < self.threshold < 1.0):
            raise ValueError(f"threshold must be in ({HYSTERESIS}, 1), got {self.threshold}")
        if not (math.isfinite(self.min_silence_s) and 0.0 <= self.min_silence_s <= 5.0):
            raise ValueError(f"min_silence_s must be in [0, 5] s, got {self.min_silence_s}")


class SpeechEdge(enum.Enum):
    START = "start"
    END = "end"


@dataclass(frozen=True)
class SpeechEvent:
    """Speech began or ended at ``sample``; the detector decided so once it had judged the
    samples before ``decided_sample`` (an end is decided ``min_silence_s`` after it)."""

    edge: SpeechEdge
    sample: int
    decided_sample: int = 0


def load_silero_session(path: Path | None = None) -> Any:
    """An onnxruntime session on one thread (a call's sender runs beside Whisper)."""
    model = path if path is not None else silero_model_path()
    if not model.is_file():
        raise SenderVadError(f"Silero VAD model missing at {model} (faster-whisper's assets)")
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        return onnxruntime.InferenceSession(
            str(model), providers=["CPUExecutionProvider"], sess_options=options
        )
    except (ImportError, RuntimeError, ValueError) as error:
        raise SenderVadError(f"cannot load the Silero VAD model {model}: {error}") from error


class SileroStreamingVad:
    """Streaming Silero VAD on 16 kHz mono float samples (module docstring)."""

    def __init__(self, session: Any, settings: SenderVadSettings | None = None) -> None:
        self._session = session
        self._settings = settings if settings is not None else SenderVadSettings()
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows = 0
        self._in_speech = False
        self._quiet_since: int | None = None
        self._probabilities: list[float] = []

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def samples_seen(self) -> int:
        """Samples judged so far (whole windows)."""
        return self._windows * WINDOW_SAMPLES

    def probabilities(self) -> list[float]:
        """Every window's speech probability so far, in order (for tests and figures)."""
        return list(self._probabilities)

    def push(self, samples: npt.ArrayLike) -> list[SpeechEvent]:
        """Judge every whole 32 ms window the samples complete; return the edges found."""
        audio = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._pending = np.concatenate([self._pending, audio])
        whole = self._pending.shape[0] // WINDOW_SAMPLES * WINDOW_SAMPLES
        windows, self._pending = self._pending[:whole], self._pending[whole:]
        events: list[SpeechEvent] = []
        for start in range(0, whole, WINDOW_SAMPLES):
            window = windows[start : start + WINDOW_SAMPLES]
            events.extend(self._judge(self._probability(window)))
        return events

    def _probability(self, window: npt.NDArray[np.float32]) -> float:
        batch = np.concatenate([self._context, window])[None, :]
        output, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = window[-CONTEXT_SAMPLES:].copy()
        probability = float(np.asarray(output).reshape(-1)[0])
        self._probabilities.append(probability)
        return probability

    def _judge(self, probability: float) -> list[SpeechEvent]:
        settings = self._settings
        index = self._windows
        self._windows += 1
        if probability >= settings.threshold:
            self._quiet_since = None
            if not self._in_speech:
                self._in_speech = True
                decided = (index + 1) * WINDOW_SAMPLES
                return [SpeechEvent(SpeechEdge.START, index * WINDOW_SAMPLES, decided)]
            return []
        if not self._in_speech or probability >= settings.threshold - HYSTERESIS:
            return []
        if self._quiet_since is None:
            self._quiet_since = index
        quiet_windows = index + 1 - self._quiet_since
        if quiet_windows * WINDOW_SAMPLES >= settings.min_silence_s * 16_000:
            self._in_speech = False
            end = self._quiet_since * WINDOW_SAMPLES
            self._quiet_since = None
            return [SpeechEvent(SpeechEdge.END, end, (index + 1) * WINDOW_SAMPLES)]
        return []
