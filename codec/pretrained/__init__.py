"""The codec every node starts from (see :mod:`simulations.train_default_codec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: Trained on the synthetic corpus' training split; shipped inside the package.
DEFAULT_CHECKPOINT: Final = Path(__file__).resolve().parent / "default.ckpt"
