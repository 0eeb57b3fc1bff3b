"""Streaming CSM encode and decode: the batch codec run on a sliding window, frame-exact.

Theory of operation
-------------------
The codec (:mod:`codec.model`) is a stack of temporal convolutions with bounded context: each of the
``blocks`` residual blocks reads ``past = kernel_size - 1 - lookahead`` frames back and
``lookahead`` frames ahead, and the encoder's final strided convolution turns ``stride`` mel
frames into one latent frame. So, with ``L = blocks * past`` and ``R = blocks * lookahead``:

* **encoder**: latent frame ``j`` reads mel frames ``j*stride - L .. j*stride + stride - 1 + R``.
  It can be sent once mel frame ``j*stride + stride - 1 + R`` has been heard;
* **decoder**: mel frame ``t`` reads the transposed-conv output ``t - L .. t + R``, i.e. latent
  frames ``(t - L) // stride .. (t + R) // stride``. It can be produced once that last latent
  frame has arrived.

Each block pads its input with zeros at both ends, so a window's outputs within ``L`` frames of
its left edge or ``R`` of its right edge differ from the whole-utterance ones, *unless* that edge
is the utterance's own edge. The streamers therefore keep ``L`` (rounded up to whole latent
frames) of history before the first output they still owe, run the batch module on
``history + new frames``, and keep only the outputs whose whole receptive field is inside the
window. At the start of the stream the window starts at frame 0, where the batch run has the same
zero padding; at :meth:`finish` the window ends where the utterance ends, where the batch run
also pads. The concatenated outputs therefore equal ``encode_to_codes`` / ``decode_codes`` of the
whole input (up to float rounding of a convolution over a different length, which can move a
latent that sits exactly on a quantization boundary by one code; tests measure it).

Cost: every push re-runs the convolutions over ``L + R`` frames of overlap, a few dozen frames,
which is nothing next to Whisper.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch

from codec.latent import dequantize, quantize
from codec.model import CodecModel
from media.errors import StreamFinishedError

__all__ = ["StreamingDecoder", "StreamingEncoder"]

FloatArray = npt.NDArray[np.float32]
CodeArray = npt.NDArray[np.uint8]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run a small forward pass on one intra-op thread.

    A streaming window is a few dozen frames: splitting it over threads costs far more than it
    saves (measured on 2 busy cores: ~30 ms a push with 2 threads, ~1 ms with 1). The setting is
    process-wide (as in :mod:`fl.train`), so it is restored at once; a concurrent training run
    that changes it meanwhile only changes speed, never results.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _left_context_frames(model: CodecModel) -> int:
    config = model.config
    return config.blocks * (config.kernel_size - 1 - config.lookahead)


def _right_context_frames(model: CodecModel) -> int:
    config = model.config
    return config.blocks * config.lookahead


class StreamingEncoder:
    """Mel frames in (any chunking), integer codes out as soon as their context is complete."""

    def __init__(self, model: CodecModel) -> None:
        self._model = model
        self._stride = model.config.stride
        # History kept before the next latent frame, rounded up to whole latent frames so the
        # window always starts on a stride boundary (the strided conv's phase).
        self._history_latents = math.ceil(_left_context_frames(model) / self._stride)
        self._right = _right_context_frames(model)
        self._buffer: FloatArray = np.empty((model.config.n_mels, 0), dtype=np.float32)
        # Mel index of the buffer's first column, and the next latent frame we owe.
        self._buffer_start = 0
        self._next_latent = 0
        self._frames_in = 0
        self._finished = False

    @property
    def latent_frames_out(self) -> int:
        return self._next_latent

    @property
    def mel_frames_in(self) -> int:
        return self._frames_in

    def push(self, mel: npt.ArrayLike) -> CodeArray:
        """Add mel frames ``(n_mels, k)``; return the codes ``(n, latent_dim)`` now complete."""
        if self._finished:
            raise StreamFinishedError("StreamingEncoder.push() after finish()")
        frames = self._checked(mel)
        self._buffer = np.concatenate([self._buffer, frames], axis=1)
        self._frames_in += frames.shape[1]
        # Latent j is complete when mel frame j*stride + stride - 1 + R has arrived.
        ready = (self._frames_in - self._right) // self._stride
        return self._emit(ready, window_end=None)

    def finish(self) -> CodeArray:
        """End of the stream: the remaining codes, with the batch encoder's end padding."""
        if self._finished:
            raise StreamFinishedError("StreamingEncoder.finish() called twice")
        self._finished = True
        total = math.ceil(self._frames_in / self._stride)
        return self._emit(total, window_end=self._frames_in)

    def _checked(self, mel: npt.ArrayLike) -> FloatArray:
        array = np.asarray(mel, dtype=np.float32)
        n_mels = self._model.config.n_mels
        if array.ndim != 2 or array.shape[0] != n_mels:
            raise ValueError(f"mel must have shape ({n_mels}, k), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("mel contains non-finite values")
        return array

    def _emit(self, ready: int, *, window_end: int | None) -> CodeArray:
        latent_dim = self._model.config.latent_dim
        if ready <= self._next_latent:
            return np.empty((0, latent_dim), dtype=np.uint8)
        first_latent = max(0, self._next_latent - self._history_latents)
        window_start = first_latent * self._stride
        stop = (
            window_end
            if window_end is not None
            else min(self._frames_in, ready * self._stride + self._right)
        )
        window = self._buffer[:, window_start - self._buffer_start : stop - self._buffer_start]
        with torch.no_grad(), _one_thread():
            latent = self._model.encode(torch.from_numpy(np.ascontiguousarray(window))[None])
        wanted = latent[0, :, self._next_latent - first_latent : ready - first_latent]
        codes = quantize(wanted.T.numpy(), self._model.config.latent_bits)
        self._next_latent = ready
        # Drop what no later window needs.
        keep_from = max(0, self._next_latent - self._history_latents) * self._stride
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[:, keep_from - self._buffer_start :]
            self._buffer_start = keep_from
        return codes


class StreamingDecoder:
    """Codes in (any chunking), log-mel frames out as soon as their context has arrived."""

    def __init__(self, model: CodecModel) -> None:
        self._model = model
        self._stride = model.config.stride
        self._left = _left_context_frames(model)
        self._right = _right_context_frames(model)
        self._latents: FloatArray = np.empty((model.config.latent_dim, 0), dtype=np.float32)
        self._latent_start = 0
        self._latents_in = 0
        self._next_mel = 0
        self._finished = False

    @property
    def mel_frames_out(self) -> int:
        return self._next_mel

    @property
    def latent_frames_in(self) -> int:
        return self._latents_in

    def push(self, codes: npt.NDArray[np.integer]) -> FloatArray:
        """Add codes ``(n, latent_dim)``; return the log-mel frames ``(n_mels, k)`` now final."""
        if self._finished:
            raise StreamFinishedError("StreamingDecoder.push() after finish()")
        latent = dequantize(codes, self._model.config.latent_bits)
        latent_dim = self._model.config.latent_dim
        if latent.ndim != 2 or latent.shape[1] != latent_dim:
            raise ValueError(f"codes must have shape (n, {latent_dim}), got {latent.shape}")
        self._latents = np.concatenate([self._latents, latent.T], axis=1)
        self._latents_in += latent.shape[0]
        # Mel frame t is final once latent (t + R) // stride is in: t < latents*stride - R.
        return self._emit(self._latents_in * self._stride - self._right)

    def finish(self) -> FloatArray:
        """End of the stream: the remaining frames, with the batch decoder's end padding."""
        if self._finished:
            raise StreamFinishedError("StreamingDecoder.finish() called twice")
        self._finished = True
        return self._emit(self._latents_in * self._stride)

    def _emit(self, ready: int) -> FloatArray:
        n_mels = self._model.config.n_mels
        if ready <= self._next_mel:
            return np.empty((n_mels, 0), dtype=np.float32)
        first_latent = max(0, (self._next_mel - self._left) // self._stride)
        window = self._latents[:, first_latent - self._latent_start :]
        with torch.no_grad(), _one_thread():
            mel = self._model.decode(torch.from_numpy(np.ascontiguousarray(window))[None])[0]
        offset = first_latent * self._stride
        out = mel[:, self._next_mel - offset : ready - offset].numpy().astype(np.float32)
        self._next_mel = ready
        keep_from = max(0, (self._next_mel - self._left) // self._stride)
        if keep_from > self._latent_start:
            self._latents = self._latents[:, keep_from - self._latent_start :]
            self._latent_start = keep_from
        return out
