"""Weight bundles: size budget, round trip, hash, and refusal of every kind of bad bundle."""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import pytest

from codec.bundle import (
    bundle_from_state,
    codec_version_hash,
    compute_content_hash,
    state_from_bundle,
)
from codec.config import CodecConfig
from codec.errors import InvalidBundleError
from codec.model import expected_shapes, new_model, state_to_numpy
from schemas import codec as wire
from schemas.errors import RemoteProtocolError
from schemas.messages import TensorBlob, TensorDtype, WeightsBundle

CONFIG = CodecConfig()
ARCH = CONFIG.architecture_id
SHAPES = expected_shapes(CONFIG)


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return state_to_numpy(new_model(CONFIG))


def _rehash(bundle: WeightsBundle, **changes: object) -> WeightsBundle:
    """A modified bundle with a *valid* hash, so the check under test is the one that fires."""
    changed = dataclasses.replace(bundle, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(changed, content_hash=compute_content_hash(changed))


def _replace_tensor(bundle: WeightsBundle, name: str, **changes: object) -> WeightsBundle:
    tensors = tuple(
        dataclasses.replace(blob, **changes) if blob.name == name else blob  # type: ignore[arg-type]
        for blob in bundle.tensors
    )
    return _rehash(bundle, tensors=tensors)


def _load(bundle: WeightsBundle) -> dict[str, np.ndarray]:
    return state_from_bundle(bundle, expected_architecture_id=ARCH, expected_shapes=SHAPES)


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_default_codec_bundle_fits_50_kb_on_the_wire(
    state: dict[str, np.ndarray], compression: str
) -> None:
    bundle = bundle_from_state(
        state,
        architecture_id=ARCH,
        round=3,
        sample_count=1000,
        compression=compression,  # type: ignore[arg-type]
    )
    # The exact wire size: the schema codec's encoding of the whole envelope.
    assert len(wire.encode(bundle)) <= 50_000


def test_int8_round_trip_error_is_at_most_half_a_scale(state: dict[str, np.ndarray]) -> None:
    bundle = bundle_from_state(state, architecture_id=ARCH, round=0, sample_count=1)
    restored = _load(bundle)
    for blob in bundle.tensors:
        assert blob.dtype == TensorDtype.INT8
        # Independent of the implementation's scale choice: it must cover the tensor's range.
        assert blob.scale * 127 >= np.abs(state[blob.name]).max() * (1 - 1e-6)
        error = np.abs(restored[blob.name] - state[blob.name]).max()
        assert error <= blob.scale / 2 * (1 + 1e-5)
        assert restored[blob.name].dtype == np.float32


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(TensorDtype.FLOAT16, 1e-3), (TensorDtype.FLOAT32, 0.0)]
)
@pytest.mark.parametrize("compression", ["zlib", "lzma", "none"])
def test_float_round_trips(
    state: dict[str, np.ndarray], dtype: TensorDtype, tolerance: float, compression: str
) -> None:
    bundle = bundle_from_state(
        state,
        architecture_id=ARCH,
        round=1,
        sample_count=2,
        weight_dtype=dtype,
        compression=compression,  # type: ignore[arg-type]
    )
    restored = _load(bundle)
    for name, array in state.items():
        np.testing.assert_allclose(restored[name], array, rtol=tolerance, atol=tolerance)


def test_bundle_survives_the_wire_and_hash_is_the_version(state: dict[str, np.ndarray]) -> None:
    bundle = bundle_from_state(state, architecture_id=ARCH, round=7, sample_count=42)
    received = wire.decode(wire.encode(bundle))
    assert isinstance(received, WeightsBundle)
    assert codec_version_hash(received) == bundle.content_hash == compute_content_hash(bundle)
    assert len(bundle.content_hash) == 32
    restored = _load(received)
    assert set(restored) == set(SHAPES)


def test_hash_covers_every_field(state: dict[str, np.ndarray]) -> None:
    bundle = bundle_from_state(state, architecture_id=ARCH, round=0, sample_count=1)
    first = bundle.tensors[0]
    flipped = bytes([first.data[0] ^ 1]) + first.data[1:]
    variants = [
        dataclasses.replace(bundle, round=1),
        dataclasses.replace(bundle, sample_count=2),
        dataclasses.replace(bundle, architecture_id=ARCH + "x"),
        dataclasses.replace(bundle, compression="lzma"),
        dataclasses.replace(bundle, tensors=bundle.tensors[1:]),
        dataclasses.replace(
            bundle, tensors=(dataclasses.replace(first, data=flipped), *bundle.tensors[1:])
        ),
        dataclasses.replace(
            bundle, tensors=(dataclasses.replace(first, scale=first.scale * 2), *bundle.tensors[1:])
        ),
        dataclasses.replace(
            bundle, tensors=(dataclasses.replace(first, name="x"), *bundle.tensors[1:])
        ),
    ]
    hashes = {compute_content_hash(v) for v in variants}
    assert bundle.content_hash not in hashes
    assert len(hashes) == len(variants)


def _bad_bundles(
    bundle: WeightsBundle, state: dict[str, np.ndarray]
) -> list[tuple[WeightsBundle, str]]:
    name = "decoder_out.bias"  # 80 elements
    float_bundle = bundle_from_state(
        state, architecture_id=ARCH, round=0, sample_count=1, weight_dtype=TensorDtype.FLOAT32
    )
    nan_data = zlib.compress(np.full(80, np.nan, "<f4").tobytes())
    inf_data = zlib.compress(np.full(80, np.inf, "<f2").tobytes())
    bomb = zlib.compress(bytes(50_000_000))
    first = bundle.tensors[0]
    return [
        (
            dataclasses.replace(bundle, architecture_id="csm-v1-m80-d32-h96-b2-s4-k5-a2"),
            "architecture",
        ),
        (dataclasses.replace(bundle, round=bundle.round + 1), "hash"),
        (dataclasses.replace(bundle, content_hash=b""), "hash"),
        (dataclasses.replace(bundle, round=-1), "encoded"),
        (_replace_tensor(bundle, name, shape=(81,)), "shape"),
        (_replace_tensor(bundle, name, data=zlib.compress(bytes(81))), "decompress"),
        (_replace_tensor(bundle, name, data=zlib.compress(bytes(79))), "decompress"),
        (_replace_tensor(bundle, name, data=bomb), "decompress"),
        (_replace_tensor(bundle, name, data=b"not zlib at all"), "corrupt"),
        (_replace_tensor(bundle, name, scale=0.0), "scale"),
        (_replace_tensor(bundle, name, scale=-1.0), "scale"),
        (_replace_tensor(bundle, name, scale=math.inf), "scale"),
        (_replace_tensor(bundle, "encoder_in.weight", scale=1e308), "non-finite"),
        (_replace_tensor(bundle, name, dtype=7), "dtype"),
        (_replace_tensor(float_bundle, name, data=nan_data), "non-finite"),
        (
            _replace_tensor(float_bundle, name, dtype=TensorDtype.FLOAT16, data=inf_data),
            "non-finite",
        ),
        (_replace_tensor(float_bundle, name, scale=2.0), "scale"),
        (_rehash(bundle, compression="bzip2"), "compression"),
        (_rehash(bundle, tensors=bundle.tensors[1:]), "missing"),
        (_rehash(bundle, tensors=(*bundle.tensors, first)), "unique"),
        (
            _rehash(
                bundle,
                tensors=(
                    *bundle.tensors,
                    TensorBlob("extra", (1,), TensorDtype.INT8, 1.0, 0.0, b""),
                ),
            ),
            "unexpected",
        ),
    ]


def test_every_kind_of_bad_bundle_is_refused_with_its_reason(state: dict[str, np.ndarray]) -> None:
    bundle = bundle_from_state(state, architecture_id=ARCH, round=0, sample_count=1)
    _load(bundle)  # the unmodified bundle is fine
    for bad, reason in _bad_bundles(bundle, state):
        with pytest.raises(InvalidBundleError, match=reason) as caught:
            _load(bad)
        assert isinstance(caught.value, RemoteProtocolError)
        assert "\n" not in str(caught.value)


def test_local_misuse_is_a_value_error(state: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        bundle_from_state(
            {"w": np.array([np.nan], np.float32)}, architecture_id=ARCH, round=0, sample_count=0
        )
    with pytest.raises(ValueError, match="compression"):
        bundle_from_state(state, architecture_id=ARCH, round=0, sample_count=0, compression="gz")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="round"):
        bundle_from_state(state, architecture_id=ARCH, round=-1, sample_count=0)


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_a_decompression_bomb_is_refused_without_inflating_it(
    state: dict[str, np.ndarray], compression: str
) -> None:
    import lzma
    import tracemalloc

    # 256 MB of zeros, compressed in chunks so that building the bomb stays cheap.
    chunk = bytes(1 << 20)
    if compression == "zlib":
        packer = zlib.compressobj(9)
        bomb = b"".join(packer.compress(chunk) for _ in range(256)) + packer.flush()
    else:
        lzma_packer = lzma.LZMACompressor(
            format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}]
        )
        bomb = b"".join(lzma_packer.compress(chunk) for _ in range(256)) + lzma_packer.flush()
    bundle = bundle_from_state(
        state,
        architecture_id=ARCH,
        round=0,
        sample_count=1,
        compression=compression,  # type: ignore[arg-type]
    )
    bad = _replace_tensor(bundle, "encoder_in.weight", data=bomb)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidBundleError, match="decompress"):
            _load(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
