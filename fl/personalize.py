"""Personalization methods shared by the node, the in-process study and the Flower app.

The methods (:class:`Method`), for a client that trains on its own audio and federates:

* ``local``: never federates; trains the shared starting codec on its own audio only.
* ``fedavg``: uses the federation's global model as is.
* ``fedavg_ft``: the global model, then fine-tuned on its own audio (:data:`FINE_TUNE_ROUNDS`
  rounds' worth of local steps).
* ``mix70``: the node's seed setting: every round ``personal = 0.7 * local + 0.3 * global``
  (:func:`personalize`, what :func:`fl.aggregate.aggregate_round` ends with).
* ``apfl``: the same mix with the mixing weight learned per client each round: the ``alpha`` of
  :data:`ALPHA_GRID` whose mix has the lowest loss on the client's own training audio
  (:func:`learned_alpha`; APFL learns it by gradient steps, a grid search on the same loss is
  used here).
* ``ditto``: a personal model trained next to the global one with the proximal term
  ``lambda / 2 * ||personal - global||^2`` (:data:`DITTO_LAMBDA`; ``fl.train.train_codec``'s
  ``anchor``), the global model federated as in FedAvg.

:func:`fl.aggregate.aggregate_round` does this as its last step, after it has computed the global
model from our own and our peers' weights. The Flower app splits that round in two: the server
computes the global model (with ``aggregate_round``), and each client mixes it into the local model
it keeps across rounds. This module is that client half, written to give what ``aggregate_round``
gives: the mix is computed in float64 and cast to float32 once, as there.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

State = Mapping[str, npt.NDArray[np.floating]]


class Method(enum.StrEnum):
    LOCAL = "local"
    FEDAVG = "fedavg"
    FEDAVG_FT = "fedavg_ft"
    MIX70 = "mix70"
    APFL = "apfl"
    DITTO = "ditto"


METHODS: Final = tuple(Method)
#: The seed's fixed mixing weight (``mix70``), kept as a setting (``fl.alpha``).
SEED_ALPHA: Final = 0.7
#: Mixing weights ``apfl`` chooses from (0 = the global model, 1 = the local one).
ALPHA_GRID: Final = tuple(round(0.1 * step, 1) for step in range(11))
#: Ditto's proximal weight on ``||personal - global||^2 / 2`` (per parameter, summed).
DITTO_LAMBDA: Final = 0.05
#: ``fedavg_ft`` fine-tunes the global model for this many rounds' worth of local steps.
FINE_TUNE_ROUNDS: Final = 1


def learned_alpha(
    local_state: State,
    global_state: State,
    loss: Callable[[dict[str, npt.NDArray[np.float32]]], float],
    grid: tuple[float, ...] = ALPHA_GRID,
) -> float:
    """The ``alpha`` of ``grid`` whose mix has the lowest ``loss`` (the client's training loss);
    on a tie the larger one (more of the client's own model)."""
    if not grid:
        raise ValueError("the alpha grid is empty")
    best_alpha, best_loss = grid[0], float("inf")
    for alpha in grid:
        value = loss(personalize(local_state, global_state, alpha))
        if value <= best_loss:
            best_alpha, best_loss = alpha, value
    return best_alpha


def personalize(
    local_state: State, global_state: State, alpha: float
) -> dict[str, npt.NDArray[np.float32]]:
    """``alpha * local + (1 - alpha) * global``, tensor by tensor.

    Raises :class:`ValueError` if ``alpha`` is outside [0, 1] or not finite, or if the two states
    do not name the same tensors with the same shapes.
    """
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise ValueError(f"alpha must be a number, got {type(alpha).__name__}")
    if not 0.0 <= float(alpha) <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if set(local_state) != set(global_state):
        missing = sorted(set(local_state) - set(global_state))
        extra = sorted(set(global_state) - set(local_state))
        raise ValueError(
            f"global state does not match the local one: missing {missing}, unexpected {extra}"
        )
    mixed: dict[str, npt.NDArray[np.float32]] = {}
    for name in sorted(local_state):
        local = np.asarray(local_state[name], dtype=np.float64)
        global_ = np.asarray(global_state[name], dtype=np.float64)
        if local.shape != global_.shape:
            raise ValueError(
                f"tensor {name!r} has shape {global_.shape} in the global state, "
                f"{local.shape} in the local one"
            )
        mixed[name] = (float(alpha) * local + (1.0 - float(alpha)) * global_).astype(np.float32)
    return mixed


def training_start(
    method: Method,
    *,
    local_state: State | None,
    global_state: State,
    alpha: float,
    loss: Callable[[dict[str, npt.NDArray[np.float32]]], float],
) -> dict[str, npt.NDArray[np.float32]]:
    """Where a federating client's training starts this round: the mix of its last trained model
    with the new global one for ``mix70`` (``alpha``) and ``apfl`` (learned), else the global
    model (FedAvg's client step, which ``fedavg``, ``fedavg_ft`` and ``ditto`` share)."""
    if local_state is None or method not in (Method.MIX70, Method.APFL):
        return {name: np.asarray(value, dtype=np.float32) for name, value in global_state.items()}
    if method is Method.APFL:
        alpha = learned_alpha(local_state, global_state, loss)
    return personalize(local_state, global_state, alpha)


# -- the node's personalization ----------------------------------------------------------------

#: ``fl.personalization`` value for the evidence rule (:data:`DEFAULT_RULE`).
AUTO: Final = "auto"
#: Every value ``fl.personalization`` accepts.
NODE_SETTINGS: Final = (AUTO, *(method.value for method in METHODS))

#: The node's default (``fl.personalization = "auto"``): the method for a node whose own training
#: audio lasts up to ``seconds`` (the first row that fits; the last row has no bound). Chosen on
#: the study's *tuning* voices (``python -m simulations.personalization_study --clients
#: tuning``, seeds 0 and 1, 7 clients each), never on the voices it is reported on. Share of
#: client runs best or tied against local and fedavg_ft: Ditto 14/14 at 5 s (also as nodes run
#: it, :func:`simulations.personalization_study.node_round`: 14/14) and, as nodes run it, 10/14
#: at 10 s (apfl 7/14); apfl 12/14 at 15 s and at 30 s, 8/14 at 60 s, where the study's
#: fedavg_ft had 10/14 but fedavg_ft as nodes run it (one model, fine-tuned each round) 7/14
#: (docs/design.md, "Personalization").
DEFAULT_RULE: Final[tuple[tuple[float, Method], ...]] = (
    (10.0, Method.DITTO),
    (math.inf, Method.APFL),
)


def default_method(local_seconds: float) -> Method:
    """The method :data:`DEFAULT_RULE` gives a node with ``local_seconds`` of training audio."""
    for up_to, method in DEFAULT_RULE:
        if local_seconds <= up_to:
            return method
    raise AssertionError("the default rule's last row has no bound")


def node_method(setting: str, local_seconds: float) -> Method:
    """The method a node runs this round: ``fl.personalization`` (:data:`NODE_SETTINGS`), with
    ``auto`` resolved by :func:`default_method` for the node's amount of training audio."""
    if setting == AUTO:
        return default_method(local_seconds)
    return Method(setting)


@dataclass(frozen=True, slots=True)
class Personal:
    """A node's model after a round, by which method, and the mixing weight used (``mix70`` and
    ``apfl``; None for the others)."""

    state: dict[str, npt.NDArray[np.float32]]
    method: Method
    alpha: float | None


def _copy(state: State) -> dict[str, npt.NDArray[np.float32]]:
    return {name: np.array(value, dtype=np.float32) for name, value in state.items()}


def round_personal(
    method: Method,
    *,
    trained: State,
    global_state: State,
    alpha: float,
    loss: Callable[[dict[str, npt.NDArray[np.float32]]], float] | None,
    train: Callable[[State, State | None], dict[str, npt.NDArray[np.float32]]] | None,
) -> Personal:
    """The model a node keeps after a round (its codec for calls, and its next bundle).

    ``trained`` is the node's model as it went into the round (trained on its own audio),
    ``global_state`` the round's aggregate of it and its peers' models
    (:func:`fl.aggregate.aggregate_round`). ``loss`` scores a state on the node's own training
    audio and ``train(start, anchor)`` trains ``start`` on it (with Ditto's proximal term towards
    ``anchor`` when given); both are None when the node has no training audio.

    * ``local``: ``trained`` (the peers' models are not used);
    * ``fedavg``: the global model;
    * ``fedavg_ft``: the global model trained on the node's audio;
    * ``mix70`` / ``apfl``: :func:`training_start`'s mix (``alpha``, or learned by ``loss``);
    * ``ditto``: ``trained``, trained on with the proximal term towards the global model.

    Without training audio, ``fedavg_ft`` and ``ditto`` keep the global model and ``apfl``
    mixes with ``alpha`` (there is nothing to fine-tune on or to learn the weight from).
    """
    if method is Method.LOCAL:
        return Personal(_copy(trained), method, None)
    if method is Method.FEDAVG or (method in (Method.FEDAVG_FT, Method.DITTO) and train is None):
        return Personal(_copy(global_state), method, None)
    if method is Method.FEDAVG_FT:
        assert train is not None
        return Personal(train(global_state, None), method, None)
    if method is Method.DITTO:
        assert train is not None
        return Personal(train(trained, global_state), method, None)
    if method is Method.APFL and loss is not None:
        alpha = learned_alpha(trained, global_state, loss)
    return Personal(personalize(trained, global_state, alpha), method, alpha)
