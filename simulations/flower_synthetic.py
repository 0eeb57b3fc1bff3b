"""Synthetic clients for the Flower app: log-mel-like features that cost nothing (not speech).

Hundreds of clients for a scaling run need data that takes no synthesis:
:func:`synthetic_client_data` draws each client's "speaker" from ``(seed, partition-id)``. It
lives with the simulations, not in the product's app; :func:`load_any_client_data` is the
loader the lab's app (:mod:`simulations.flower_app`) gives its clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fl.flower.data import ClientData, load_client_data
from fl.flower.settings import ClientPlan

FloatArray = npt.NDArray[np.float32]


def _whisper_clamp(log_mel: npt.NDArray[np.float64]) -> FloatArray:
    # Whisper's front end floors everything 8 decades under the loudest bin; after its
    # (x + 4) / 4 scaling that is 2 units.
    clamped: FloatArray = np.maximum(log_mel, log_mel.max() - 2.0).astype(np.float32)
    return clamped


def synthetic_client_data(
    partition_id: int, *, seed: int, utterances: int, frames: int, n_mels: int = 80
) -> ClientData:
    """Deterministic log-mel-like features of one synthetic "speaker" (not speech).

    Speaker traits drawn from ``(seed, partition_id)``: three formant-like bumps (centre, width,
    height) that drift over time, a harmonic ripple across the bins whose spacing plays the role
    of pitch, a spectral tilt and a syllable rate. ``utterances`` training sequences and
    ``max(1, utterances // 2)`` held-out ones, ``frames`` frames each.
    """
    rng = np.random.default_rng([seed, partition_id])
    bins = np.arange(n_mels, dtype=np.float64)[:, None] / max(1, n_mels - 1)
    centres = np.sort(rng.uniform([0.08, 0.25, 0.45], [0.22, 0.45, 0.7]))
    widths = rng.uniform(0.03, 0.08, size=3)
    heights = rng.uniform(0.5, 1.2, size=3)
    drift = rng.uniform(0.01, 0.05, size=3)
    ripple_period = rng.uniform(0.04, 0.12)
    ripple_depth = rng.uniform(0.05, 0.25)
    tilt = rng.uniform(-1.2, -0.3)
    syllables_per_s = rng.uniform(3.0, 6.0)

    def utterance() -> FloatArray:
        t = np.arange(frames, dtype=np.float64)[None, :] / 100.0
        phase = rng.uniform(0, 2 * np.pi, size=4)
        spectrum = tilt * bins + ripple_depth * np.cos(2 * np.pi * bins / ripple_period + phase[3])
        for k in range(3):
            centre = centres[k] + drift[k] * np.sin(2 * np.pi * 1.5 * t + phase[k])
            spectrum = spectrum + heights[k] * np.exp(
                -((bins - centre) ** 2) / (2 * widths[k] ** 2)
            )
        energy = np.clip(np.sin(2 * np.pi * syllables_per_s * t + phase[0]), 0.0, None)
        log_mel = 0.2 + energy * (spectrum + 0.4) + 0.05 * rng.standard_normal((n_mels, frames))
        return _whisper_clamp(log_mel)

    train = tuple(utterance() for _ in range(utterances))
    heldout = tuple(utterance() for _ in range(max(1, utterances // 2)))
    return ClientData(train=train, heldout=heldout)


def load_any_client_data(
    plan: ClientPlan, partition_id: int, node_config: Mapping[str, Any]
) -> ClientData:
    """Synthetic features for a ``"synthetic"`` plan, else the app's own (prepared) loader."""
    if plan.data_source == "synthetic":
        return synthetic_client_data(
            partition_id,
            seed=plan.data_seed,
            utterances=plan.synthetic_utterances,
            frames=plan.synthetic_frames,
            n_mels=plan.codec.n_mels,
        )
    return load_client_data(plan, partition_id, node_config)
