"""Flower records ↔ codec states, and the checked reading of every message the app receives."""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import functools
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    RecordDict,
)

from codec.config import CodecConfig
from codec.model import expected_shapes
from fl.flower.settings import ClientPlan, FlowerAppError

FloatArray = npt.NDArray[np.float32]
State = dict[str, FloatArray]
#: A metric value in a Flower MetricRecord.
MetricValue = int | float | list[int] | list[float]

#: Keys of the records inside every message.
ARRAYS_KEY: Final = "arrays"
CONFIG_KEY: Final = "config"
METRICS_KEY: Final = "metrics"
META_KEY: Final = "meta"
PLAN_KEY: Final = "plan"


def state_to_arrays(state: Mapping[str, npt.NDArray[np.floating]]) -> ArrayRecord:
    """A model state as an ArrayRecord (float32, names sorted)."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(state[name], dtype=np.float32)) for name in sorted(state)}
    )


def arrays_to_state(record: ArrayRecord) -> dict[str, npt.NDArray[Any]]:
    """An ArrayRecord as numpy arrays; undecodable data is a :class:`FlowerAppError`."""
    try:
        return {name: np.asarray(array.numpy()) for name, array in record.items()}
    except (TypeError, ValueError, OSError, EOFError) as error:
        raise FlowerAppError(f"undecodable array in the record: {error}") from error


@functools.lru_cache(maxsize=8)
def _shapes(codec: CodecConfig) -> dict[str, tuple[int, ...]]:
    # Building a model to read its shapes costs milliseconds; a client checks several states
    # per message, for hundreds of messages, always with the same config.
    return expected_shapes(codec)


def checked_state(state: Mapping[str, npt.NDArray[Any]], codec: CodecConfig, what: str) -> State:
    shapes = _shapes(codec)
    if set(state) != set(shapes):
        raise FlowerAppError(f"{what} does not hold the tensors of {codec.architecture_id}")
    checked: State = {}
    for name, shape in shapes.items():
        array = np.asarray(state[name])
        if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
            raise FlowerAppError(f"{what}: tensor {name} is {array.dtype}{array.shape}")
        if not np.isfinite(array).all():
            raise FlowerAppError(f"{what}: tensor {name} has non-finite values")
        checked[name] = array.astype(np.float32, copy=False)
    return checked


def record(content: RecordDict, key: str, kind: type[Any], what: str) -> Any:
    try:
        value = content[key]
    except KeyError:
        raise FlowerAppError(f"{what} has no {key!r} record") from None
    if not isinstance(value, kind):
        raise FlowerAppError(f"{what}: {key!r} is a {type(value).__name__}, not {kind.__name__}")
    return value


def plan_of(message: Message) -> ClientPlan:
    config = record(message.content, CONFIG_KEY, ConfigRecord, "message")
    text = config.get(PLAN_KEY)
    if not isinstance(text, str):
        raise FlowerAppError("message config has no client plan")
    return ClientPlan.from_json(text)


def partition_id_of(context: Context) -> int:
    value = context.node_config.get("partition-id")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FlowerAppError(
            f"node_config partition-id must be an int >= 0, got {value!r} "
            "(start the SuperNode with --node-config 'partition-id=N num-partitions=M')"
        )
    return value


def server_round_of(message: Message) -> int:
    config = record(message.content, CONFIG_KEY, ConfigRecord, "message")
    value = config.get("server-round")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FlowerAppError(f"message config server-round must be an int >= 1, got {value!r}")
    return value
