"""Crash-safe codec checkpoints: a JSON header, raw float32 tensors, and a checksum. No pickle.

File layout::

    b"PARLEYC1" | u32 big-endian header length | header (UTF-8 JSON)
    | tensors (little-endian float32, C order, in header order) | BLAKE2s-256 of all of the above

The header holds the codec config (so the model can be rebuilt), the architecture id, the FL
round, the sample count, free-form metadata, and each tensor's name and shape.

Writes are atomic (docs/design.md, "Storage and crash safety"): the bytes go to a temporary file in
the same directory, which is flushed and fsynced, renamed over the target with :func:`os.replace`
(atomic on POSIX), and the directory is fsynced so the rename itself survives a power cut. A crash
at any point leaves either the old file or the new one, never a mix; the checksum catches anything
else (a truncated copy, a flipped bit) and :func:`load_checkpoint` reports it as
:class:`~fl.errors.CheckpointError`.

Generations: :func:`save_checkpoint` keeps the file it replaces, if that one is intact, as
``<name>.prev`` (:func:`previous_path`), so a checkpoint damaged later on disk (or deleted) can
be recovered from the generation before it (:func:`load_with_fallback`) instead of the model
being lost or silently re-initialised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from codec.config import CodecConfig
from codec.errors import CheckpointError
from codec.model import expected_shapes
from common.atomic import write_atomic

MAGIC: Final = b"PARLEYC1"
FORMAT_VERSION: Final = 1
#: A checkpoint of a codec that fits a 50 KB bundle is ~200 KB; refuse to read absurd files.
MAX_CHECKPOINT_BYTES: Final = 64 * 1024 * 1024
MAX_HEADER_BYTES: Final = 1024 * 1024
_DIGEST_BYTES: Final = 32
_LENGTH: Final = struct.Struct(">I")

MetadataValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A trained codec at one point in time."""

    codec_config: CodecConfig
    state: Mapping[str, npt.NDArray[np.float32]]
    round: int = 0
    sample_count: int = 0
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


def _encode(checkpoint: Checkpoint) -> bytes:
    config = checkpoint.codec_config
    shapes = expected_shapes(config)
    if set(checkpoint.state) != set(shapes):
        raise ValueError("checkpoint state does not match its codec config's tensors")
    names = sorted(shapes)
    arrays = []
    for name in names:
        array = np.ascontiguousarray(checkpoint.state[name], dtype="<f4")
        if array.shape != shapes[name]:
            raise ValueError(f"tensor {name!r} has shape {array.shape}, expected {shapes[name]}")
        if not np.isfinite(array).all():
            raise ValueError(f"tensor {name!r} contains non-finite values")
        arrays.append(array)
    header = {
        "format": FORMAT_VERSION,
        "architecture_id": config.architecture_id,
        "codec_config": config.to_json_dict(),
        "round": checkpoint.round,
        "sample_count": checkpoint.sample_count,
        "metadata": dict(checkpoint.metadata),
        "tensors": [{"name": name, "shape": list(shapes[name])} for name in names],
    }
    header_bytes = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
    body = b"".join(
        [MAGIC, _LENGTH.pack(len(header_bytes)), header_bytes, *(a.tobytes() for a in arrays)]
    )
    return body + hashlib.blake2s(body).digest()


PREVIOUS_SUFFIX: Final = ".prev"


def previous_path(path: Path) -> Path:
    """Where the generation before ``path`` is kept."""
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def save_checkpoint(path: Path, checkpoint: Checkpoint, *, keep_previous: bool = True) -> None:
    """Atomically write ``checkpoint`` to ``path`` (:class:`ValueError` if it is inconsistent).

    With ``keep_previous``, the file being replaced becomes ``<name>.prev`` first, but only if
    it is an intact checkpoint: a damaged file never overwrites a good previous generation.
    """
    if checkpoint.round < 0 or checkpoint.sample_count < 0:
        raise ValueError("round and sample_count must not be negative")
    data = _encode(checkpoint)
    if keep_previous:
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = b""
        if current and current != data and _is_intact(current):
            write_atomic(previous_path(path), current)
    write_atomic(path, data)


def _is_intact(data: bytes) -> bool:
    try:
        _parse(data)
    except (ValueError, TypeError, UnicodeDecodeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """What :func:`load_with_fallback` found: the checkpoint, and the problem it worked around."""

    checkpoint: Checkpoint
    from_previous: bool
    problem: str | None


def load_with_fallback(path: Path) -> LoadedCheckpoint:
    """``path``, or its previous generation when ``path`` is missing or damaged.

    Raises :class:`CheckpointError` when neither is usable (the message names both).
    """
    try:
        return LoadedCheckpoint(load_checkpoint(path), from_previous=False, problem=None)
    except CheckpointError as error:
        problem = str(error)
    previous = previous_path(path)
    if not previous.exists():
        raise CheckpointError(
            f"{problem}; no previous generation ({previous.name}) to fall back to"
        )
    try:
        return LoadedCheckpoint(load_checkpoint(previous), from_previous=True, problem=problem)
    except CheckpointError as error:
        raise CheckpointError(f"{problem}; the previous generation too: {error}") from error


def _nonnegative_int(header: dict[str, object], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def _parse(data: bytes) -> Checkpoint:
    """Decode checkpoint bytes; raises :class:`ValueError` with the reason."""
    minimum = len(MAGIC) + _LENGTH.size + _DIGEST_BYTES
    if len(data) < minimum or not data.startswith(MAGIC):
        raise ValueError("not a parley checkpoint (bad magic or truncated)")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if not hmac.compare_digest(hashlib.blake2s(body).digest(), digest):
        raise ValueError("checksum mismatch (truncated or corrupted)")
    (header_length,) = _LENGTH.unpack_from(body, len(MAGIC))
    header_start = len(MAGIC) + _LENGTH.size
    if header_length > min(MAX_HEADER_BYTES, len(body) - header_start):
        raise ValueError("header length is out of range")
    header = json.loads(body[header_start : header_start + header_length].decode("utf-8"))
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format (expected {FORMAT_VERSION})")
    config = CodecConfig.from_json_dict(header.get("codec_config"))
    if header.get("architecture_id") != config.architecture_id:
        raise ValueError("architecture id does not match the codec config")
    metadata = header.get("metadata")
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str | int | float | bool | type(None)) for value in metadata.values()
    ):
        raise ValueError("metadata must be a JSON object of scalars")
    shapes = expected_shapes(config)
    listed = header.get("tensors")
    names = sorted(shapes)
    if listed != [{"name": name, "shape": list(shapes[name])} for name in names]:
        raise ValueError("tensor list does not match the codec config")
    offset = header_start + header_length
    state: dict[str, npt.NDArray[np.float32]] = {}
    for name in names:
        size = math.prod(shapes[name]) * 4
        if offset + size > len(body):
            raise ValueError("tensor data is truncated")
        array = np.frombuffer(body, dtype="<f4", count=size // 4, offset=offset)
        state[name] = array.reshape(shapes[name]).astype(np.float32)
        offset += size
        if not np.isfinite(state[name]).all():
            raise ValueError(f"tensor {name!r} contains non-finite values")
    if offset != len(body):
        raise ValueError("trailing bytes after the tensor data")
    return Checkpoint(
        codec_config=config,
        state=state,
        round=_nonnegative_int(header, "round"),
        sample_count=_nonnegative_int(header, "sample_count"),
        metadata=metadata,
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and fully validate a checkpoint; any problem is a one-line :class:`CheckpointError`."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {reason}") from error
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint {str(path)!r} is larger than {MAX_CHECKPOINT_BYTES} B")
    try:
        return _parse(data)
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors; TypeError from bad types
        # inside the header (e.g. a list where a number belongs) is caught the same way.
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is invalid: {first_line}") from error
