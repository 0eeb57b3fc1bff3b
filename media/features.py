"""Whisper's log-mel front end in numpy, for whole utterances and for live streams.

The features must be exactly what Whisper's encoder was trained on, because the call path runs
Whisper on log-mel frames decoded by the speech codec with no vocoder in between. The recipe is
faster-whisper 1.2.1's ``FeatureExtractor``, step for step in float32 (only the mel-filter sums
run in float64 in a fixed order, see ``_apply_mel_filters``; the result agrees to ~1e-7):

1. append ``HOP_LENGTH`` (160) zero samples to the waveform;
2. reflect-pad ``N_FFT // 2`` (200) samples on both sides (``center=True``);
3. frame every ``HOP_LENGTH`` samples with a periodic 400-point Hann window, take ``|rfft|**2``;
4. drop the last frame (so ``n`` samples give ``n // 160 + 1`` frames, see ``frame_count``);
5. apply 80 Slaney-normalised mel filters (0-8 kHz), ``log10`` with a 1e-10 floor;
6. clamp to ``max - 8`` (the maximum over the whole utterance) and map ``x -> (x + 4) / 4``.

Steps 1-5 give the *log spectrogram* (``log_spectrogram``); step 6 is the *normalisation*
(``normalize``), and ``log_mel`` does both.

Theory of operation for streams (``StreamingLogMel``): a frame centred on sample ``160 k`` needs
the samples up to ``160 k + 199``, so it can be emitted as soon as they have arrived; the first
frames also need the left reflection, which is known once 201 samples are in. Only the tail
(zero padding + right reflection) waits for ``finish()``. Concatenating every chunk's
``log_spec`` therefore equals ``log_spectrogram`` of the whole signal.

Step 6 cannot be done that way: the batch clamp uses the maximum of frames not yet heard. A
stream clamps each frame against the *running* maximum of the log spectrogram up to and
including that frame::

    stream_features[:, k] = (max(log_spec[:, k], max(log_spec[:, :k + 1]) - 8) + 4) / 4

So a streamed frame is never above the batch one, is equal wherever ``log_spec >= max - 8`` of
the whole signal, and every frame from the one holding the global maximum onwards is identical.
The difference only affects the quietest bins early in a stream, which the clamp exists to
flatten anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from media.errors import InvalidAudioError, StreamFinishedError

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE: Final = 16_000
N_FFT: Final = 400
HOP_LENGTH: Final = 160
N_MELS: Final = 80
FRAMES_PER_SECOND: Final = SAMPLE_RATE // HOP_LENGTH
# Whisper's dynamic range: everything more than 8 decades below the loudest bin is flattened.
DYNAMIC_RANGE: Final = 8.0
LOG_FLOOR: Final = 1e-10

_N_BINS: Final = N_FFT // 2 + 1
_CENTER_PAD: Final = N_FFT // 2
# Frames are transformed this many at a time so an hour of audio never needs the whole
# (frames x 400) matrix in memory at once.
_FRAMES_PER_BLOCK: Final = 2048


def _hz_to_slaney_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's (Auditory Toolbox) mel scale: linear below 1 kHz, logarithmic above."""
    linear_step = 200.0 / 3.0
    log_start_hz = 1000.0
    log_start_mel = log_start_hz / linear_step
    log_step = np.log(6.4) / 27.0
    mel = hz / linear_step
    above = hz >= log_start_hz
    mel[above] = log_start_mel + np.log(hz[above] / log_start_hz) / log_step
    return mel


def _slaney_mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear_step = 200.0 / 3.0
    log_start_hz = 1000.0
    log_start_mel = log_start_hz / linear_step
    log_step = np.log(6.4) / 27.0
    hz = mel * linear_step
    above = mel >= log_start_mel
    hz[above] = log_start_hz * np.exp(log_step * (mel[above] - log_start_mel))
    return hz


def mel_filters(
    *, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> FloatArray:
    """Triangular mel filters, Slaney scale and area normalisation, shape ``(n_mels, n_fft//2+1)``.

    The same bank as librosa's ``filters.mel(htk=False, norm="slaney")`` over 0 Hz .. Nyquist.
    """
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges_mel = np.linspace(
        0.0, _hz_to_slaney_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2, dtype=np.float64
    )
    edges_hz = _slaney_mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    distance = edges_hz[:, None] - fft_hz[None, :]
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Constant energy per band: each triangle has unit area on the Hz axis.
    weights *= (2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels]))[:, None]
    return weights.astype(np.float32)


_MEL_FILTERS: Final = mel_filters()


def _band_layout(filters: FloatArray) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Each band's non-zero FFT bins and weights, padded to the widest band with weight 0."""
    spans = [np.flatnonzero(row) for row in filters]
    width = max(int(span[-1] - span[0]) + 1 for span in spans if span.size)
    bins = np.zeros((filters.shape[0], width), dtype=np.intp)
    weights = np.zeros((filters.shape[0], width), dtype=np.float64)
    for band, span in enumerate(spans):
        if span.size:
            lo, hi = int(span[0]), int(span[-1]) + 1
            bins[band, : hi - lo] = np.arange(lo, hi)
            weights[band, : hi - lo] = filters[band, lo:hi]
    return bins, weights


_BAND_BINS, _BAND_WEIGHTS = _band_layout(_MEL_FILTERS)
# Periodic Hann window (torch.hann_window's default), as Whisper uses.
_WINDOW: Final = np.hanning(N_FFT + 1)[:-1].astype(np.float32)


def frame_count(n_samples: int) -> int:
    """Number of log-mel frames for ``n_samples`` samples (one per hop, plus one)."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return n_samples // HOP_LENGTH + 1


def as_waveform(audio: npt.ArrayLike) -> FloatArray:
    """Validate a mono waveform (1-D, floating point, finite); return it as contiguous float32."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise InvalidAudioError(f"audio must be a 1-D mono waveform, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        # Integer PCM has no agreed scale (int16? int32?), and Whisper's log floor is not
        # scale-invariant: make the caller say how to map it onto [-1, 1].
        raise InvalidAudioError(
            f"audio must be floating point in [-1, 1], got dtype {array.dtype}"
            " (divide int16 PCM by 32768)"
        )
    waveform = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(waveform)):
        raise InvalidAudioError("audio holds NaN or infinite samples")
    return waveform


def _apply_mel_filters(power: FloatArray) -> FloatArray:
    """``(_MEL_FILTERS @ power.T)`` with a summation order that does not depend on the batch.

    A BLAS matmul rounds a column differently depending on how many columns it is given, so
    streamed frames would differ from batch frames in the last bit. Summing each band's few
    bins in a fixed order (float32 products are exact in float64) makes every frame's value a
    function of that frame alone, and slightly more accurate than float32 BLAS.
    """
    total = np.zeros((power.shape[0], N_MELS), dtype=np.float64)
    for column in range(_BAND_BINS.shape[1]):
        total += power[:, _BAND_BINS[:, column]] * _BAND_WEIGHTS[:, column]
    return total.T.astype(np.float32)


def _log_spectrogram_of_padded(padded: FloatArray, n_frames: int) -> FloatArray:
    """Log10 mel power of the first ``n_frames`` frames of an already padded signal."""
    out = np.empty((N_MELS, n_frames), dtype=np.float32)
    if n_frames == 0:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    for start in range(0, n_frames, _FRAMES_PER_BLOCK):
        stop = min(start + _FRAMES_PER_BLOCK, n_frames)
        spectrum = np.fft.rfft(windows[start:stop] * _WINDOW, n=N_FFT, axis=-1)
        power = np.abs(spectrum.astype(np.complex64)) ** 2
        mel = _apply_mel_filters(power)
        out[:, start:stop] = np.log10(np.maximum(mel, np.float32(LOG_FLOOR)))
    return out


def log_spectrogram(audio: npt.ArrayLike) -> FloatArray:
    """Steps 1-5 of the module docstring: log10 mel power before normalisation, ``(80, T)``."""
    waveform = as_waveform(audio)
    with_tail = np.pad(waveform, (0, HOP_LENGTH))
    # np.pad keeps reflecting when the signal is shorter than the pad, like faster-whisper.
    padded = np.pad(with_tail, _CENTER_PAD, mode="reflect")
    return _log_spectrogram_of_padded(padded, frame_count(waveform.shape[0]))


def normalize(log_spec: FloatArray, *, ceiling: float | None = None) -> FloatArray:
    """Step 6: clamp to ``ceiling - 8`` and map ``x -> (x + 4) / 4``.

    ``ceiling`` defaults to the array's own maximum, which is Whisper's batch rule.
    """
    if log_spec.size == 0:
        return log_spec.astype(np.float32, copy=True)
    top = np.float32(log_spec.max() if ceiling is None else ceiling)
    clamped = np.maximum(log_spec, top - np.float32(DYNAMIC_RANGE))
    return ((clamped + np.float32(4.0)) / np.float32(4.0)).astype(np.float32, copy=False)


def log_mel(audio: npt.ArrayLike) -> FloatArray:
    """Whisper's log-mel features of a 16 kHz mono waveform: ``(80, len(audio) // 160 + 1)``.

    Equal to ``faster_whisper.feature_extractor.FeatureExtractor()(audio)`` (tested to 1e-4),
    which is the array ``WhisperModel.transcribe`` hands to its decoding loop.
    """
    return normalize(log_spectrogram(audio))


@dataclass(frozen=True, eq=False)
class MelChunk:
    """Frames emitted by one ``StreamingLogMel`` call, both shaped ``(80, n_frames)``.

    ``log_spec`` is before normalisation (equal to the batch ``log_spectrogram`` columns);
    ``features`` is normalised against the running maximum (see the module docstring).
    """

    log_spec: FloatArray
    features: FloatArray

    @property
    def n_frames(self) -> int:
        return int(self.log_spec.shape[1])


def _empty_chunk() -> MelChunk:
    empty = np.empty((N_MELS, 0), dtype=np.float32)
    return MelChunk(log_spec=empty, features=empty.copy())


class StreamingLogMel:
    """Incremental ``log_mel``: feed samples as they arrive, get every frame that is final.

    ``push`` returns the frames whose windows are complete; ``finish`` applies Whisper's tail
    padding and returns the rest, after which the object refuses more input. The concatenated
    ``log_spec`` of all chunks equals ``log_spectrogram`` of the whole signal; ``features`` use
    a running maximum (module docstring).
    """

    def __init__(self) -> None:
        # Until 201 samples are in, the left reflection is unknown: hold raw samples here.
        self._head: FloatArray = np.empty(0, dtype=np.float32)
        # Once started: the padded signal from the first sample of the next frame onwards.
        self._pending: FloatArray | None = None
        self._samples_seen = 0
        self._frames_emitted = 0
        self._running_max = np.float32(-np.inf)
        self._finished = False

    @property
    def samples_seen(self) -> int:
        return self._samples_seen

    @property
    def frames_emitted(self) -> int:
        return self._frames_emitted

    @property
    def running_max(self) -> float:
        """The normalisation ceiling so far (``-inf`` before the first frame)."""
        return float(self._running_max)

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, samples: npt.ArrayLike) -> MelChunk:
        """Add 16 kHz mono samples; return the frames they complete (possibly none)."""
        if self._finished:
            raise StreamFinishedError("StreamingLogMel.push() after finish(): start a new stream")
        waveform = as_waveform(samples)
        self._samples_seen += waveform.shape[0]
        if self._pending is None:
            self._head = np.concatenate([self._head, waveform])
            if self._head.shape[0] <= _CENTER_PAD:
                return _empty_chunk()
            left_reflection = self._head[_CENTER_PAD:0:-1]
            self._pending = np.concatenate([left_reflection, self._head])
            self._head = np.empty(0, dtype=np.float32)
        else:
            self._pending = np.concatenate([self._pending, waveform])
        ready = self._complete_frames(self._pending.shape[0])
        return self._emit(self._pending, ready, drop_last=False)

    def finish(self) -> MelChunk:
        """Apply the end-of-signal padding and return the remaining frames."""
        if self._finished:
            raise StreamFinishedError("StreamingLogMel.finish() called twice")
        self._finished = True
        if self._pending is None:
            # Too short to have started: the batch recipe on what we hold is the exact answer.
            with_tail = np.pad(self._head, (0, HOP_LENGTH))
            padded = np.pad(with_tail, _CENTER_PAD, mode="reflect")
            self._head = np.empty(0, dtype=np.float32)
            return self._emit(padded, frame_count(self._samples_seen), drop_last=False)
        # _pending always holds at least the last 201 samples of (signal + tail zeros), which
        # is all the right reflection needs.
        with_tail = np.concatenate([self._pending, np.zeros(HOP_LENGTH, dtype=np.float32)])
        padded = np.concatenate([with_tail, with_tail[-2 : -2 - _CENTER_PAD : -1]])
        return self._emit(padded, self._complete_frames(padded.shape[0]), drop_last=True)

    @staticmethod
    def _complete_frames(n_padded: int) -> int:
        return 0 if n_padded < N_FFT else (n_padded - N_FFT) // HOP_LENGTH + 1

    def _emit(self, padded: FloatArray, n_frames: int, *, drop_last: bool) -> MelChunk:
        if drop_last:
            n_frames -= 1
        if n_frames <= 0:
            return _empty_chunk()
        log_spec = _log_spectrogram_of_padded(padded, n_frames)
        if self._pending is not None and not self._finished:
            self._pending = self._pending[n_frames * HOP_LENGTH :].copy()
        self._frames_emitted += n_frames
        # Ceiling for frame k is the max over frames 0..k, the most a causal stream can know.
        frame_max = log_spec.max(axis=0)
        ceilings = np.maximum.accumulate(np.maximum(frame_max, self._running_max))
        self._running_max = np.float32(ceilings[-1])
        clamped = np.maximum(log_spec, ceilings[None, :] - np.float32(DYNAMIC_RANGE))
        features = ((clamped + np.float32(4.0)) / np.float32(4.0)).astype(np.float32)
        return MelChunk(log_spec=log_spec, features=features)
