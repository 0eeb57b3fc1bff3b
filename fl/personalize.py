"""APFL-style mixing of a local model with a global one: ``alpha * local + (1 - alpha) * global``.

:func:`fl.aggregate.aggregate_round` does this as its last step, after it has computed the global
model from our own and our peers' weights. The Flower app splits that round in two: the server
computes the global model (with ``aggregate_round``), and each client mixes it into the local model
it keeps across rounds. This module is that client half, written to give what ``aggregate_round``
gives: the mix is computed in float64 and cast to float32 once, as there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

State = Mapping[str, npt.NDArray[np.floating]]


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
