"""Codec weights ↔ :class:`~schemas.messages.WeightsBundle` (quantize, compress, hash, validate).

Packing: tensors are sorted by name; weights are stored as symmetric per-tensor int8
(``value = (stored - zero_point) * scale`` with ``zero_point = 0``, ``scale = max|w| / 127``,
so the round-trip error is at most ``scale / 2``), or as float16/float32 when asked. Each blob's
bytes are little-endian and compressed on their own with the bundle's ``compression``.

The content hash is BLAKE2s-256 over a canonical, length-prefixed encoding of every other field,
so it changes with any bit of the weights or metadata. It is the codec's version hash that peers
advertise in ``Hello`` (:func:`codec_version_hash`).

Unpacking is the entry point for bytes from a peer and trusts nothing: architecture, hash,
names, shapes, dtypes, quantization parameters, compressed and decompressed sizes (the
decompressor is never allowed to produce more than the declared shape needs, which defuses
decompression bombs) and finiteness are all checked, and every failure is one
:class:`~fl.errors.InvalidBundleError` with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import lzma
import math
import struct
import zlib
from collections.abc import Mapping
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from codec.errors import BundleProblem, InvalidBundleError
from schemas.messages import TensorBlob, TensorDtype, WeightsBundle

Compression = Literal["zlib", "lzma", "none"]
COMPRESSIONS: Final[tuple[str, ...]] = ("zlib", "lzma", "none")

#: Most tensors / elements a bundle may declare: a bound on what a peer can make us allocate.
MAX_TENSORS: Final = 256
MAX_TOTAL_ELEMENTS: Final = 4_000_000
MAX_NAME_LENGTH: Final = 128
_MAX_UINT64: Final = 2**64 - 1
_INT8_LIMIT: Final = 127
_HASH_DOMAIN: Final = b"parley/weights-bundle/v1\x00"

_ITEM_SIZE: Final = {TensorDtype.INT8: 1, TensorDtype.FLOAT16: 2, TensorDtype.FLOAT32: 4}
_NUMPY_DTYPE: Final[dict[TensorDtype, np.dtype[np.generic]]] = {
    TensorDtype.INT8: np.dtype(np.int8),
    TensorDtype.FLOAT16: np.dtype("<f2"),
    TensorDtype.FLOAT32: np.dtype("<f4"),
}
# Raw LZMA2 (no .xz container): the container's ~60 bytes of headers and checks per blob buy
# nothing here, because the content hash already covers every byte. The dictionary is what the
# decoder allocates up front, so it is sized to our tensors (preset 9 alone would be 64 MiB).
_LZMA_FILTERS: Final = [
    {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}
]


def _compress(data: bytes, compression: Compression) -> bytes:
    if compression == "zlib":
        return zlib.compress(data, 9)
    if compression == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return data


def _decompress(data: bytes, compression: str, expected_size: int, name: str) -> bytes:
    """Decompress at most ``expected_size`` bytes; anything more or less is an error."""
    try:
        if compression == "none":
            output, complete = data, True
        elif compression == "zlib":
            zlib_stream = zlib.decompressobj()
            output = zlib_stream.decompress(data, expected_size + 1)
            complete = zlib_stream.eof and not zlib_stream.unused_data
            complete = complete and not zlib_stream.unconsumed_tail
        else:
            lzma_stream = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            output = lzma_stream.decompress(data, expected_size + 1)
            complete = lzma_stream.eof and not lzma_stream.unused_data
    except (zlib.error, lzma.LZMAError) as error:
        raise InvalidBundleError(
            BundleProblem.CORRUPT_DATA, f"tensor {name!r}: {compression} data is corrupt"
        ) from error
    if len(output) != expected_size or not complete:
        raise InvalidBundleError(
            BundleProblem.SIZE,
            f"tensor {name!r}: data does not decompress to exactly {expected_size} bytes",
        )
    return output


def _quantize_int8(array: npt.NDArray[np.float32]) -> tuple[bytes, float]:
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    # float32-representable, so the scale means the same thing however a peer stores it.
    scale = float(np.float32(peak / _INT8_LIMIT)) if peak > 0.0 else 1.0
    stored = np.clip(np.rint(array / scale), -_INT8_LIMIT, _INT8_LIMIT).astype(np.int8)
    return stored.tobytes(), scale


def _encode_tensor(
    name: str,
    array: npt.NDArray[np.floating],
    weight_dtype: TensorDtype,
    compression: Compression,
) -> TensorBlob:
    values = np.asarray(array, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"tensor {name!r} contains non-finite values")
    if weight_dtype == TensorDtype.INT8:
        raw, scale = _quantize_int8(values)
    else:
        raw, scale = values.astype(_NUMPY_DTYPE[weight_dtype]).tobytes(), 1.0
        if weight_dtype == TensorDtype.FLOAT16 and np.abs(values).max(initial=0.0) > 65504.0:
            raise ValueError(f"tensor {name!r} overflows float16")
    return TensorBlob(
        name=name,
        shape=tuple(int(dim) for dim in values.shape),
        dtype=weight_dtype,
        scale=scale,
        zero_point=0.0,
        data=_compress(raw, compression),
    )


def _put_text(parts: list[bytes], text: str) -> None:
    encoded = text.encode("utf-8")
    parts.append(struct.pack(">I", len(encoded)))
    parts.append(encoded)


def _put_uint64(parts: list[bytes], value: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= _MAX_UINT64:
        raise ValueError(f"{what} must be an integer in [0, 2**64), got {value!r}")
    parts.append(struct.pack(">Q", value))


def compute_content_hash(bundle: WeightsBundle) -> bytes:
    """BLAKE2s-256 over the canonical encoding of every field except ``content_hash``.

    Raises :class:`ValueError` if a field cannot be encoded (negative counts, bad text).
    """
    parts: list[bytes] = [_HASH_DOMAIN]
    _put_text(parts, bundle.architecture_id)
    _put_uint64(parts, bundle.round, "round")
    _put_uint64(parts, bundle.sample_count, "sample_count")
    _put_text(parts, bundle.compression)
    parts.append(struct.pack(">I", len(bundle.tensors)))
    for blob in bundle.tensors:
        _put_text(parts, blob.name)
        parts.append(struct.pack(">I", len(blob.shape)))
        for dim in blob.shape:
            _put_uint64(parts, dim, f"shape of {blob.name!r}")
        parts.append(struct.pack(">Bdd", int(blob.dtype), blob.scale, blob.zero_point))
        parts.append(struct.pack(">Q", len(blob.data)))
        parts.append(blob.data)
    return hashlib.blake2s(b"".join(parts)).digest()


def codec_version_hash(bundle: WeightsBundle) -> bytes:
    """The version a node advertises in ``Hello``: its bundle's content hash."""
    return bundle.content_hash


def bundle_from_state(
    state: Mapping[str, npt.NDArray[np.floating]],
    *,
    architecture_id: str,
    round: int,  # shadows the builtin on purpose: it is the wire field's name
    sample_count: int,
    weight_dtype: TensorDtype = TensorDtype.INT8,
    compression: Compression = "zlib",
) -> WeightsBundle:
    """Quantize, compress and hash ``state``; raises :class:`ValueError` on unusable input."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if not state:
        raise ValueError("state has no tensors")
    tensors = tuple(
        _encode_tensor(name, state[name], TensorDtype(weight_dtype), compression)
        for name in sorted(state)
    )
    unsigned = WeightsBundle(
        architecture_id=architecture_id,
        round=round,
        sample_count=sample_count,
        compression=compression,
        tensors=tensors,
        content_hash=b"",
    )
    return WeightsBundle(
        architecture_id=architecture_id,
        round=round,
        sample_count=sample_count,
        compression=compression,
        tensors=tensors,
        content_hash=compute_content_hash(unsigned),
    )


def _check_header(
    bundle: WeightsBundle,
    expected_architecture_id: str,
    expected_shapes: Mapping[str, tuple[int, ...]],
) -> None:
    if bundle.architecture_id != expected_architecture_id:
        raise InvalidBundleError(
            BundleProblem.ARCHITECTURE,
            f"architecture {bundle.architecture_id[:MAX_NAME_LENGTH]!r} does not match "
            f"{expected_architecture_id!r}",
        )
    if len(bundle.tensors) > MAX_TENSORS:
        raise InvalidBundleError(
            BundleProblem.SIZE, f"{len(bundle.tensors)} tensors exceed the limit of {MAX_TENSORS}"
        )
    try:
        recomputed = compute_content_hash(bundle)
    except (ValueError, TypeError, struct.error, UnicodeEncodeError) as error:
        raise InvalidBundleError(
            BundleProblem.UNENCODABLE, f"bundle fields cannot be encoded: {error}"
        ) from error
    if not hmac.compare_digest(recomputed, bundle.content_hash):
        raise InvalidBundleError(
            BundleProblem.CONTENT_HASH, "content hash does not match the bundle's contents"
        )
    if bundle.compression not in COMPRESSIONS:
        raise InvalidBundleError(
            BundleProblem.COMPRESSION,
            f"unknown compression {bundle.compression[:MAX_NAME_LENGTH]!r}",
        )
    names = [blob.name for blob in bundle.tensors]
    if len(set(names)) != len(names):
        raise InvalidBundleError(BundleProblem.TENSOR_NAMES, "tensor names are not unique")
    if set(names) != set(expected_shapes):
        missing = sorted(set(expected_shapes) - set(names))
        unexpected = sorted(name[:MAX_NAME_LENGTH] for name in set(names) - set(expected_shapes))
        raise InvalidBundleError(
            BundleProblem.TENSOR_NAMES,
            f"tensor names differ: missing {missing}, unexpected {unexpected}",
        )


def _decode_tensor(
    blob: TensorBlob, expected_shape: tuple[int, ...], compression: str
) -> npt.NDArray[np.float32]:
    name = blob.name
    if tuple(blob.shape) != tuple(expected_shape):
        raise InvalidBundleError(
            BundleProblem.SHAPE,
            f"tensor {name!r} has shape {tuple(blob.shape)}, expected {tuple(expected_shape)}",
        )
    try:
        dtype = TensorDtype(blob.dtype)
    except ValueError:
        raise InvalidBundleError(
            BundleProblem.DTYPE, f"tensor {name!r} has unknown dtype {blob.dtype!r}"
        ) from None
    if not (math.isfinite(blob.scale) and math.isfinite(blob.zero_point)):
        raise InvalidBundleError(
            BundleProblem.NON_FINITE, f"tensor {name!r} has a non-finite scale or zero point"
        )
    if dtype == TensorDtype.INT8:
        if blob.scale <= 0.0 or not -128.0 <= blob.zero_point <= _INT8_LIMIT:
            raise InvalidBundleError(
                BundleProblem.QUANTIZATION,
                f"tensor {name!r} has an invalid int8 scale or zero point",
            )
    elif blob.scale != 1.0 or blob.zero_point != 0.0:
        raise InvalidBundleError(
            BundleProblem.QUANTIZATION,
            f"tensor {name!r}: float tensors must have scale 1, zero point 0",
        )
    element_count = math.prod(expected_shape)
    raw = _decompress(blob.data, compression, element_count * _ITEM_SIZE[dtype], name)
    stored = np.frombuffer(raw, dtype=_NUMPY_DTYPE[dtype]).reshape(expected_shape)
    values: npt.NDArray[np.float32]
    if dtype == TensorDtype.INT8:
        with np.errstate(over="ignore"):
            values = ((stored.astype(np.float64) - blob.zero_point) * blob.scale).astype(np.float32)
    else:
        values = stored.astype(np.float32)
    if not np.isfinite(values).all():
        raise InvalidBundleError(
            BundleProblem.NON_FINITE, f"tensor {name!r} contains non-finite values"
        )
    return values


def state_from_bundle(
    bundle: WeightsBundle,
    *,
    expected_architecture_id: str,
    expected_shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, npt.NDArray[np.float32]]:
    """Validate a (possibly hostile) bundle and return its dequantized float32 weights.

    Raises :class:`~fl.errors.InvalidBundleError` with the reason on any problem.
    """
    total = sum(math.prod(shape) for shape in expected_shapes.values())
    if total > MAX_TOTAL_ELEMENTS:
        raise ValueError(f"expected shapes hold {total} elements, over {MAX_TOTAL_ELEMENTS}")
    _check_header(bundle, expected_architecture_id, expected_shapes)
    return {
        blob.name: _decode_tensor(blob, expected_shapes[blob.name], bundle.compression)
        for blob in bundle.tensors
    }


def payload_bytes(bundle: WeightsBundle) -> int:
    """Bytes of tensor data in ``bundle`` (excludes names, shapes and framing)."""
    return sum(len(blob.data) for blob in bundle.tensors)
