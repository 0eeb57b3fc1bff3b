"""Local training of the CSM on the user's own log-mel features (CPU, synchronous).

Training sees the wire's quantization: with ``quantization="ste"`` the forward pass uses the real
quantized latent and the gradient passes straight through; with ``"noise"`` the latent gets
uniform noise of one quantization step (the usual differentiable proxy). Either way the decoder
learns to live with the codes it will receive.

Everything here is plain blocking torch code. The daemon and CLI run it in a worker thread
(``trio.to_thread.run_sync``); ``progress`` and ``stop`` are the only ways in and out while it
runs. ``torch.set_num_threads`` is process-wide, so it is set for the run and restored after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from codec.latent import step_size
from codec.model import CodecModel, decode_codes, encode_to_codes
from fl.config import QuantizationMode, TrainConfig

ProgressCallback = Callable[[int, int, float], None]
StopCallback = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class TrainReport:
    """What one call of :func:`train_codec` did; ``losses`` holds one L1 value per step."""

    steps_run: int
    steps_planned: int
    losses: tuple[float, ...]
    stopped_early: bool
    frames_available: int

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def final_loss(self) -> float:
        """Mean of the last tenth of the steps (one step's loss is noisy)."""
        if not self.losses:
            return float("nan")
        tail = max(1, len(self.losses) // 10)
        return float(np.mean(self.losses[-tail:]))


def quantize_for_training(
    latent: torch.Tensor, bits: int, mode: QuantizationMode, generator: torch.Generator
) -> torch.Tensor:
    """A differentiable stand-in for :func:`codec.latent.quantize` followed by dequantize."""
    step = step_size(bits)
    if mode == "noise":
        noise = (torch.rand(latent.shape, generator=generator) - 0.5) * step
        return torch.clamp(latent + noise, -1.0, 1.0)
    quantized = torch.round((latent + 1.0) / step) * step - 1.0
    return latent + (quantized - latent).detach()


def _validated_features(
    features: Sequence[npt.NDArray[np.floating]], n_mels: int
) -> list[npt.NDArray[np.float32]]:
    checked: list[npt.NDArray[np.float32]] = []
    for index, item in enumerate(features):
        array = np.asarray(item, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != n_mels or array.shape[1] == 0:
            raise ValueError(
                f"features[{index}] must have shape ({n_mels}, T>0), got {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"features[{index}] contains non-finite values")
        checked.append(array)
    if not checked:
        raise ValueError("no features to train on")
    return checked


def _crop_length(config: TrainConfig, stride: int) -> int:
    # A multiple of the stride, so no crop ends in a half-filled latent frame.
    return max(stride, config.crop_frames // stride * stride)


def _sample_batch(
    features: list[npt.NDArray[np.float32]],
    weights: npt.NDArray[np.float64],
    crop: int,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (sequences picked in proportion to their length) and a validity mask.

    A sequence shorter than the crop is padded with its quietest value, and the mask keeps the
    padding out of the loss.
    """
    n_mels = features[0].shape[0]
    batch = np.empty((batch_size, n_mels, crop), dtype=np.float32)
    mask = np.zeros((batch_size, 1, crop), dtype=np.float32)
    picks = rng.choice(len(features), size=batch_size, p=weights)
    for row, pick in enumerate(picks):
        sequence = features[pick]
        length = sequence.shape[1]
        if length >= crop:
            start = int(rng.integers(0, length - crop + 1))
            batch[row] = sequence[:, start : start + crop]
            mask[row] = 1.0
        else:
            batch[row] = sequence.min()
            batch[row, :, :length] = sequence
            mask[row, :, :length] = 1.0
    return torch.from_numpy(batch), torch.from_numpy(mask)


def train_codec(
    model: CodecModel,
    features: Sequence[npt.NDArray[np.floating]],
    train_config: TrainConfig,
    *,
    progress: ProgressCallback | None = None,
    stop: StopCallback | None = None,
) -> TrainReport:
    """Train ``model`` in place on random crops of ``features`` (each ``(n_mels, T)``).

    ``progress(step, steps, loss)`` is called after every step; ``stop()`` is polled before every
    step and ends training early when it returns true. Deterministic for a given seed, model
    state and thread count.
    """
    codec_config = model.config
    checked = _validated_features(features, codec_config.n_mels)
    lengths = np.array([item.shape[1] for item in checked], dtype=np.float64)
    weights = lengths / lengths.sum()
    crop = _crop_length(train_config, codec_config.stride)
    rng = np.random.default_rng(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _cosine_factor(step, train_config.steps)
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(train_config.threads)
    losses: list[float] = []
    stopped = False
    model.train()
    try:
        for step in range(train_config.steps):
            if stop is not None and stop():
                stopped = True
                break
            mel, mask = _sample_batch(checked, weights, crop, train_config.batch_size, rng)
            latent = quantize_for_training(
                model.encode(mel), codec_config.latent_bits, train_config.quantization, generator
            )
            reconstruction = model.decode(latent)[:, :, :crop]
            error = (reconstruction - mel).abs() * mask
            loss = error.sum() / (mask.sum() * codec_config.n_mels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip_norm)
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            losses.append(value)
            if progress is not None:
                progress(step + 1, train_config.steps, value)
    finally:
        model.eval()
        torch.set_num_threads(previous_threads)
    return TrainReport(
        steps_run=len(losses),
        steps_planned=train_config.steps,
        losses=tuple(losses),
        stopped_early=stopped,
        frames_available=int(lengths.sum()),
    )


def _cosine_factor(step: int, total: int) -> float:
    # Short warm-up, then cosine decay to 10 %: stable for the tiny batches of enrollment.
    warmup = max(1, min(20, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + float(np.cos(np.pi * min(1.0, progress))))


def encode_decode(model: CodecModel, mel: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Mel ``(n_mels, T)`` through the real wire path (quantize, dequantize), same length out."""
    codes = encode_to_codes(model, mel)
    length = np.asarray(mel).shape[1]
    return decode_codes(model, codes)[:, :length]


def evaluate_l1(model: CodecModel, features: Sequence[npt.NDArray[np.floating]]) -> float:
    """Mean absolute log-mel error per bin and frame, through real quantization."""
    checked = _validated_features(features, model.config.n_mels)
    total = 0.0
    count = 0
    for mel in checked:
        total += float(np.abs(encode_decode(model, mel) - mel).sum())
        count += mel.size
    return total / count
