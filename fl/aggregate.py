"""Personalized federated averaging with validation, update clipping and robust statistics.

Pure functions over ``{name: array}`` states: no torch, no I/O, no clock. One round:

1. **Validate** every peer update against our own (architecture id, tensor names and shapes,
   finite values, ``0 < sample_count <= max_sample_count``, no duplicate peer id). A bad update
   is *recorded* with its reason and left out; it never raises, since one bad peer must not
   stop the round.
2. **Clip** each peer's update ``u_k = w_k - local`` (one flat vector over all tensors) to
   ``||u_k|| <= clip_norm_ratio * reference_norm``. The reference is fixed (the norm of the
   shared starting codec, which the caller passes), not ``||local||``: a radius relative to the
   current model lets a poisoner grow the model by a constant factor every round, which
   compounds (1.3x per round was 36,000x after 40 rounds). Without a reference, ``||local||``
   is used (one-off aggregations, tests).
3. **Aggregate** ours and the clipped peers' weights: ``Σ n_k w_k / Σ n_k`` or, with at least
   ``min_bundles_for_robust`` participants (ours included), a coordinate-wise trimmed mean or
   median. The robust statistics are unweighted on purpose: ``sample_count`` is self-reported,
   and a weighted median would let one liar choose the result.
4. **Bound the global update** ``g - local`` to the same radius. The weighted mean of points in
   a ball stays in it, but a coordinate-wise statistic need not; projecting keeps one guarantee
   for every mode.
5. **Personalize**: ``personal = alpha * local + (1 - alpha) * global``.

Hence, whatever the peers send, ``||personal - local|| <= (1 - alpha) * clip_norm_ratio *
reference_norm``: a poisoned bundle moves our model by at most that much per round, a bound
that does not grow with the model. Steps that add up over rounds are the round scheduler's to
catch: it discards a round whose result worsens our held-out loss (:mod:`fl.round_guard`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from codec.config import MAX_SAMPLE_COUNT
from fl.config import AggregationConfig

State = Mapping[str, npt.NDArray[np.floating]]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """One participant's weights as it declared them (validated by :func:`aggregate_round`)."""

    peer_id: str
    architecture_id: str
    sample_count: int
    state: State


@dataclass(frozen=True, slots=True)
class Participant:
    """A peer whose update was used, with its update norm before and after clipping."""

    peer_id: str
    sample_count: int
    update_norm: float
    clipped_norm: float

    @property
    def clipped(self) -> bool:
        return self.clipped_norm < self.update_norm


@dataclass(frozen=True, slots=True)
class Rejection:
    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AggregationRecord:
    """What one aggregation decided (who took part, who was refused, the clipping).

    The node keeps it as the ``record`` of its round's :class:`daemon.database.RoundRecord`
    (the one round record: number, status, peers, losses), as JSON, so every version's rows
    stay readable."""

    round: int
    local_peer_id: str
    local_sample_count: int
    alpha: float
    statistic: str
    clip_bound: float
    local_norm: float
    participants: tuple[Participant, ...]
    rejected: tuple[Rejection, ...]
    global_update_norm: float
    global_update_clipped: bool
    personal_update_norm: float

    @property
    def total_sample_count(self) -> int:
        return self.local_sample_count + sum(peer.sample_count for peer in self.participants)


@dataclass(frozen=True, slots=True)
class AggregationResult:
    personal_state: dict[str, npt.NDArray[np.float32]]
    global_state: dict[str, npt.NDArray[np.float32]]
    record: AggregationRecord


def _flatten(state: State, names: Sequence[str]) -> FloatArray:
    return np.concatenate([np.asarray(state[name], dtype=np.float64).ravel() for name in names])


def _unflatten(
    vector: FloatArray, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, npt.NDArray[np.float32]]:
    result: dict[str, npt.NDArray[np.float32]] = {}
    offset = 0
    for name in names:
        size = math.prod(shapes[name])
        result[name] = vector[offset : offset + size].reshape(shapes[name]).astype(np.float32)
        offset += size
    return result


def validation_error(
    update: PeerUpdate,
    architecture_id: str,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    max_sample_count: int = MAX_SAMPLE_COUNT,
) -> str | None:
    """Why ``update`` cannot be aggregated with a model of this architecture, or ``None``."""
    if update.architecture_id != architecture_id:
        return f"architecture {update.architecture_id!r} is not ours ({architecture_id!r})"
    if isinstance(update.sample_count, bool) or not isinstance(update.sample_count, int):
        return "sample count is not an integer"
    if update.sample_count <= 0:
        return f"sample count {update.sample_count} is not positive"
    if update.sample_count > max_sample_count:
        return f"sample count {update.sample_count} is over {max_sample_count}"
    if set(update.state) != set(shapes):
        missing = sorted(set(shapes) - set(update.state))
        extra = sorted(set(update.state) - set(shapes))
        return f"tensor names differ: missing {missing}, unexpected {extra}"
    for name, shape in shapes.items():
        array = np.asarray(update.state[name])
        if array.shape != shape:
            return f"tensor {name!r} has shape {array.shape}, expected {shape}"
        if not np.issubdtype(array.dtype, np.floating):
            return f"tensor {name!r} has dtype {array.dtype}, expected floating point"
        if not np.isfinite(array).all():
            return f"tensor {name!r} contains non-finite values"
    return None


def clip_to_ball(update: FloatArray, bound: float) -> FloatArray:
    """``update`` scaled down, if needed, to Euclidean norm ``bound``."""
    norm = float(np.linalg.norm(update))
    if norm <= bound or norm == 0.0:
        return update
    return update * (bound / norm)


def trimmed_mean(values: FloatArray, trim_fraction: float) -> FloatArray:
    """Coordinate-wise mean after dropping the ``floor(trim_fraction * K)`` lowest and highest."""
    count = values.shape[0]
    cut = math.floor(trim_fraction * count)
    kept = np.sort(values, axis=0)[cut : count - cut] if cut else values
    result: FloatArray = kept.mean(axis=0)
    return result


def aggregate_round(
    local: PeerUpdate,
    peers: Sequence[PeerUpdate],
    config: AggregationConfig,
    *,
    round_number: int = 0,
    reference_norm: float | None = None,
) -> AggregationResult:
    """Run one personalized-FedAvg round (see the module docstring for the steps).

    ``local`` is our own model; it must be valid (:class:`ValueError` otherwise, since that is
    our bug). Peers are validated and rejected with a reason, never raised on.
    ``reference_norm`` fixes the clip radius (``clip_norm_ratio * reference_norm``); None
    uses ``||local||``.
    """
    if reference_norm is not None and not (math.isfinite(reference_norm) and reference_norm > 0):
        raise ValueError(f"reference_norm must be positive and finite, got {reference_norm}")
    names = sorted(local.state)
    shapes = {name: tuple(np.asarray(local.state[name]).shape) for name in names}
    limit = config.max_sample_count
    problem = validation_error(local, local.architecture_id, shapes, max_sample_count=limit)
    if problem is not None:
        raise ValueError(f"local model is invalid: {problem}")
    local_vector = _flatten(local.state, names)
    local_norm = float(np.linalg.norm(local_vector))
    bound = config.clip_norm_ratio * (local_norm if reference_norm is None else reference_norm)

    rejected: list[Rejection] = []
    participants: list[Participant] = []
    vectors: list[FloatArray] = [local_vector]
    weights: list[float] = [float(local.sample_count)]
    seen = {local.peer_id}
    for peer in peers:
        problem = validation_error(peer, local.architecture_id, shapes, max_sample_count=limit)
        if problem is None and peer.peer_id in seen:
            problem = "duplicate peer id in this round"
        if problem is not None:
            rejected.append(Rejection(peer_id=peer.peer_id, reason=problem))
            continue
        seen.add(peer.peer_id)
        update = _flatten(peer.state, names) - local_vector
        clipped = clip_to_ball(update, bound)
        participants.append(
            Participant(
                peer_id=peer.peer_id,
                sample_count=peer.sample_count,
                update_norm=float(np.linalg.norm(update)),
                clipped_norm=float(np.linalg.norm(clipped)),
            )
        )
        vectors.append(local_vector + clipped)
        weights.append(float(peer.sample_count))

    stacked = np.stack(vectors)
    statistic: str
    if config.robust != "none" and len(vectors) >= config.min_bundles_for_robust:
        statistic = config.robust
        if statistic == "median":
            global_vector = np.median(stacked, axis=0)
        else:
            global_vector = trimmed_mean(stacked, config.trim_fraction)
    else:
        statistic = "weighted_mean"
        weight_array = np.asarray(weights)
        global_vector = (weight_array[:, None] * stacked).sum(axis=0) / weight_array.sum()

    global_update = global_vector - local_vector
    bounded_update = clip_to_ball(global_update, bound)
    global_vector = local_vector + bounded_update
    personal_vector = config.alpha * local_vector + (1.0 - config.alpha) * global_vector

    record = AggregationRecord(
        round=round_number,
        local_peer_id=local.peer_id,
        local_sample_count=local.sample_count,
        alpha=config.alpha,
        statistic=statistic,
        clip_bound=bound,
        local_norm=local_norm,
        participants=tuple(participants),
        rejected=tuple(rejected),
        global_update_norm=float(np.linalg.norm(global_update)),
        global_update_clipped=bool(np.linalg.norm(global_update) > bound),
        personal_update_norm=float(np.linalg.norm(personal_vector - local_vector)),
    )
    return AggregationResult(
        personal_state=_unflatten(personal_vector, names, shapes),
        global_state=_unflatten(global_vector, names, shapes),
        record=record,
    )
