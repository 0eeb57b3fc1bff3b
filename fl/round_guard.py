"""What a node checks before it keeps a round's result: held-out loss must not regress.

Pure functions, no torch, no I/O. Clipping (:mod:`fl.aggregate`) bounds how far one round can
move our model, but not where many rounds add up to: a trusted poisoner that pushes the same
way every round walks the model off, one bounded step at a time. The round scheduler therefore
scores our model before and after a round on enrolled audio it does *not* train on
(:func:`split_heldout`) and keeps the result only if the loss did not grow by more than a set
margin (:func:`loss_regressed`); otherwise the round is recorded as discarded and our previous
model stays. Honest rounds that help, or cost a little (personalization trades some local loss
for the others' voices), pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, TypeVar

__all__ = ["DEFAULT_MAX_LOSS_INCREASE", "HELDOUT_EVERY", "loss_regressed", "split_heldout"]

T = TypeVar("T")

#: One enrolled item in this many is held out of round training and scored instead.
HELDOUT_EVERY: Final = 5
#: A round whose held-out loss grows by more than this fraction is discarded.
DEFAULT_MAX_LOSS_INCREASE: Final = 0.02


def split_heldout(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """``(train, heldout)``: every :data:`HELDOUT_EVERY`-th item (at least one, when there are
    two or more) is held out. With a single item there is nothing to hold out: it is both."""
    if len(items) < 2:
        return list(items), list(items)
    held = {index for index in range(len(items)) if index % HELDOUT_EVERY == HELDOUT_EVERY - 1}
    if not held:
        held = {len(items) - 1}
    train = [item for index, item in enumerate(items) if index not in held]
    heldout = [item for index, item in enumerate(items) if index in held]
    return train, heldout


def loss_regressed(before: float, after: float, max_increase: float) -> bool:
    """Whether ``after`` is worse than ``before`` by more than the fraction ``max_increase``
    (a non-finite ``after`` always is)."""
    if not math.isfinite(after):
        return True
    if not math.isfinite(before):
        return False
    return after > before * (1.0 + max_increase)
