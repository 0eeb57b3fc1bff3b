"""Client data of the Flower app: one speaker's log-mel features per client (non-IID).

``"prepared"``: log-mel features of the synthesized multi-speaker corpus, written by
:func:`simulations.flower_sim.prepare_corpus_features` (or any directory of the same layout,
which a SuperNode can name with ``--node-config 'data-dir="..."'``). Client ``p`` reads speaker
``p mod S``; clients beyond the ``S`` speakers reuse a speaker through :func:`speaker_variant`.
``"synthetic"`` data is a simulation's (:mod:`simulations.flower_synthetic`): the product app
refuses it, the lab's app (:mod:`simulations.flower_app`) passes its own loader in.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fl.flower.settings import ClientPlan, FlowerAppError

FloatArray = npt.NDArray[np.float32]
PREPARED_INDEX_FILE: Final = "speakers.json"


@dataclass(frozen=True, slots=True)
class ClientData:
    """One client's log-mel features, each ``(n_mels, T)``: its own training and held-out sets."""

    train: tuple[FloatArray, ...]
    heldout: tuple[FloatArray, ...]

    @property
    def train_frames(self) -> int:
        return sum(item.shape[1] for item in self.train)


#: How a client app gets its data: ``(plan, partition_id, node_config) -> ClientData``.
ClientDataLoader = Callable[[ClientPlan, int, Mapping[str, Any]], ClientData]


def speaker_variant(features: FloatArray, variant: int) -> FloatArray:
    """A per-client transform that turns one corpus speaker into several clients.

    Variant 0 is the speaker unchanged. Variant ``v > 0`` shifts the mel axis by
    ``(+1, -1, +2, -2)[(v - 1) % 4]`` bins (a crude pitch/formant shift; the edge bin is repeated,
    not wrapped) and adds a spectral tilt of ``±0.05 * (1 + (v - 1) // 4)`` from the lowest to
    the highest bin. It makes more clients than speakers distinct, not more realistic.
    """
    if variant < 0:
        raise FlowerAppError(f"speaker variant must be >= 0, got {variant}")
    if variant == 0:
        return features
    shift = (1, -1, 2, -2)[(variant - 1) % 4]
    tilt = 0.05 * (1 + (variant - 1) // 4) * (1 if variant % 2 else -1)
    n_mels = features.shape[0]
    source = np.clip(np.arange(n_mels) - shift, 0, n_mels - 1)
    shifted = features[source]
    ramp = np.linspace(-0.5, 0.5, n_mels, dtype=np.float64)[:, None]
    return (shifted + tilt * ramp).astype(np.float32)


def _prepared_speakers(directory: Path) -> list[str]:
    index = directory / PREPARED_INDEX_FILE
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FlowerAppError(f"no prepared features at {directory} ({index} missing)") from error
    except (OSError, ValueError) as error:
        raise FlowerAppError(f"cannot read {index}: {error}") from error
    speakers = data.get("speakers") if isinstance(data, dict) else None
    if (
        not isinstance(speakers, list)
        or not speakers
        or not all(isinstance(item, str) for item in speakers)
    ):
        raise FlowerAppError(f"{index} must hold a non-empty list of speaker ids")
    return speakers


def load_prepared_client_data(directory: Path, partition_id: int, n_mels: int) -> ClientData:
    """Client ``partition_id``'s features from a directory of prepared corpus features."""
    speakers = _prepared_speakers(directory)
    speaker_index = partition_id % len(speakers)
    variant = partition_id // len(speakers)
    path = directory / f"speaker-{speaker_index}.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise FlowerAppError(f"cannot read prepared features {path}: {error}") from error
    train = [arrays[name] for name in sorted(arrays) if name.startswith("train-")]
    heldout = [arrays[name] for name in sorted(arrays) if name.startswith("heldout-")]
    for name, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != n_mels or array.shape[1] == 0:
            raise FlowerAppError(f"{path}: {name} has shape {array.shape}, expected ({n_mels}, T)")
        if not np.isfinite(array).all():
            raise FlowerAppError(f"{path}: {name} has non-finite values")
    if not train or not heldout:
        raise FlowerAppError(f"{path} needs train-* and heldout-* arrays")
    return ClientData(
        train=tuple(speaker_variant(item, variant) for item in train),
        heldout=tuple(speaker_variant(item, variant) for item in heldout),
    )


def load_client_data(
    plan: ClientPlan, partition_id: int, node_config: Mapping[str, Any]
) -> ClientData:
    """This client's prepared features (see the module docstring)."""
    if plan.data_source != "prepared":
        raise FlowerAppError(
            f"data source {plan.data_source!r} is not served by this app: synthetic clients "
            "are a simulation's (simulations.flower_app)"
        )
    directory = node_config.get("data-dir", plan.data_dir)
    if not isinstance(directory, str) or not directory:
        raise FlowerAppError("node_config data-dir must be a non-empty string")
    return load_prepared_client_data(Path(directory), partition_id, plan.codec.n_mels)
