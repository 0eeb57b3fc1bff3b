"""The CSM's config, shapes, size budget and the lookahead it documents."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec.bundle import bundle_from_state
from codec.config import CodecConfig
from codec.errors import InvalidBundleError
from codec.latent import dequantize, quantize
from codec.model import (
    CodecModel,
    decode_codes,
    encode_to_codes,
    expected_shapes,
    load_numpy_state,
    model_from_bundle,
    new_model,
    parameter_count,
    state_to_numpy,
)
from fl.config import AggregationConfig, TrainConfig


def test_default_codec_fits_the_budget_and_bitrate() -> None:
    config = CodecConfig()
    model = new_model(config)
    # ≤ 45k parameters: int8 + container must stay under the 50 KB bundle limit.
    assert parameter_count(model) <= 45_100
    # kbps = latent_dim * bits * (100 / stride) / 1000, counted independently.
    assert config.kbps == pytest.approx(32 * 5 * 25 / 1000)
    assert CodecConfig(stride=2, latent_bits=4).kbps == pytest.approx(6.4)
    assert config.frame_rate_hz == 25.0


def test_architecture_id_round_trips_and_names_every_shape_field() -> None:
    config = CodecConfig(hidden=48, blocks=3, stride=2, kernel_size=7, lookahead=3)
    assert CodecConfig.from_architecture_id(config.architecture_id) == CodecConfig(
        hidden=48, blocks=3, stride=2, kernel_size=7, lookahead=3
    )
    base = CodecConfig()
    shape_changes: list[dict[str, int]] = [
        {"n_mels": 64},
        {"latent_dim": 16},
        {"hidden": 32},
        {"blocks": 1},
        {"stride": 2},
        {"kernel_size": 3, "lookahead": 1},
        {"lookahead": 1},
    ]
    ids = {CodecConfig(**change).architecture_id for change in shape_changes}
    assert len(ids) == len(shape_changes)
    assert base.architecture_id not in ids
    # Wire settings and the init seed change neither shapes nor the computation graph.
    assert CodecConfig(latent_bits=3, init_seed=9).architecture_id == base.architecture_id


@pytest.mark.parametrize(
    "bad",
    [
        "csm-v2-m80-d32-h64-b2-s4-k5-a2",
        "csm-v1-m80-d32-h064-b2-s4-k5-a2",
        "csm-v1-m80",
        "",
        "x" * 500,
        "csm-v1-m80-d32-h64-b2-s4-k5-a5",
    ],
)
def test_malformed_architecture_ids_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="architecture_id|lookahead"):
        CodecConfig.from_architecture_id(bad)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (CodecConfig, {"stride": 0}, "stride"),
        (CodecConfig, {"latent_bits": 9}, "latent_bits"),
        (CodecConfig, {"hidden": 2.5}, "hidden"),
        (CodecConfig, {"lookahead": 5}, "lookahead"),
        (CodecConfig, {"blocks": True}, "blocks"),
        (TrainConfig, {"learning_rate": 0.0}, "learning_rate"),
        (TrainConfig, {"steps": -1}, "steps"),
        (TrainConfig, {"quantization": "round"}, "quantization"),
        (TrainConfig, {"learning_rate": float("nan")}, "learning_rate"),
        (AggregationConfig, {"alpha": 1.5}, "alpha"),
        (AggregationConfig, {"clip_norm_ratio": 0.0}, "clip_norm_ratio"),
        (AggregationConfig, {"robust": "mean"}, "robust"),
        (AggregationConfig, {"trim_fraction": 0.5}, "trim_fraction"),
        (AggregationConfig, {"min_bundles_for_robust": 0}, "min_bundles_for_robust"),
    ],
)
def test_invalid_config_values_name_the_field(
    cls: type, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_configs_are_frozen_and_keyword_only() -> None:
    config = CodecConfig()
    with pytest.raises(AttributeError):
        config.stride = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        CodecConfig(80)  # type: ignore[call-arg]


def test_config_json_round_trip_and_strictness() -> None:
    config = CodecConfig(hidden=40, latent_bits=6, init_seed=3)
    assert CodecConfig.from_json_dict(config.to_json_dict()) == config
    with pytest.raises(ValueError, match="keys"):
        CodecConfig.from_json_dict({**config.to_json_dict(), "extra": 1})
    with pytest.raises(ValueError, match="stride"):
        CodecConfig.from_json_dict({**config.to_json_dict(), "stride": "4"})


def test_shapes_of_encode_and_decode() -> None:
    config = CodecConfig()
    model = new_model(config)
    mel = torch.randn(2, 80, 101)
    with torch.no_grad():
        latent = model.encode(mel)
        assert latent.shape == (2, 32, 26)  # ceil(101 / 4)
        assert float(latent.abs().max()) <= 1.0
        assert model.decode(latent).shape == (2, 80, 104)
        assert model(mel).shape == mel.shape
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.randn(2, 79, 10))
    with pytest.raises(ValueError, match="shape"):
        model.decode(torch.randn(2, 31, 10))


@pytest.mark.parametrize("config", [CodecConfig(), CodecConfig(stride=2, lookahead=1, blocks=3)])
def test_encoder_reads_no_further_ahead_than_documented(config: CodecConfig) -> None:
    """Perturbing mel frame t changes only latents whose window reaches t."""
    model = new_model(config)
    frames = 64 * config.stride
    base = torch.randn(1, 80, frames)
    t = frames // 2
    changed = base.clone()
    changed[:, :, t] += 5.0
    with torch.no_grad():
        diff = (model.encode(changed) - model.encode(base)).abs().amax(dim=1)[0]
    affected = torch.nonzero(diff > 0).flatten().tolist()
    s = config.stride
    for j in affected:
        first_needed = j * s - config.encoder_left_context_frames
        last_needed = j * s + s - 1 + config.encoder_lookahead_frames
        assert first_needed <= t <= last_needed
    # and the documented lookahead is tight: the first latent whose window reaches t sees it
    assert (t - config.encoder_lookahead_frames) // s in affected


def test_decoder_reads_no_further_ahead_than_documented() -> None:
    config = CodecConfig()
    model = new_model(config)
    latent = torch.rand(1, 32, 40) * 2 - 1
    j = 20
    changed = latent.clone()
    changed[:, :, j] = -changed[:, :, j]
    with torch.no_grad():
        diff = (model.decode(changed) - model.decode(latent)).abs().amax(dim=1)[0]
    affected = torch.nonzero(diff > 0).flatten()
    # Output frame u may depend on latent j only if latent j holds a frame within u's lookahead.
    assert int(affected.min()) >= j * config.stride - config.decoder_lookahead_frames


def test_init_is_seeded_and_shared_between_nodes() -> None:
    first = state_to_numpy(new_model(CodecConfig()))
    second = state_to_numpy(new_model(CodecConfig()))
    other = state_to_numpy(new_model(CodecConfig(init_seed=1)))
    assert all(np.array_equal(first[name], second[name]) for name in first)
    assert not all(np.array_equal(first[name], other[name]) for name in first)
    assert {name: array.shape for name, array in first.items()} == expected_shapes(CodecConfig())


def test_state_load_checks_names_and_shapes() -> None:
    model = CodecModel(CodecConfig())
    state = state_to_numpy(model)
    state["decoder_out.bias"] = state["decoder_out.bias"] + 1.0
    load_numpy_state(model, state)
    assert np.array_equal(state_to_numpy(model)["decoder_out.bias"], state["decoder_out.bias"])
    with pytest.raises(ValueError, match="shape"):
        load_numpy_state(model, {**state, "decoder_out.bias": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="missing"):
        load_numpy_state(model, {k: v for k, v in state.items() if k != "decoder_out.bias"})


def test_codes_path_matches_the_latent_module() -> None:
    config = CodecConfig()
    model = new_model(config)
    mel = np.random.default_rng(0).normal(size=(80, 50)).astype(np.float32)
    codes = encode_to_codes(model, mel)
    assert codes.shape == (13, 32)
    with torch.no_grad():
        latent = model.encode(torch.from_numpy(mel)[None])[0].T.numpy()
    assert np.array_equal(codes, quantize(latent, config.latent_bits))
    decoded = decode_codes(model, codes)
    with torch.no_grad():
        expected = model.decode(torch.from_numpy(dequantize(codes, 5).T.copy())[None])[0].numpy()
    assert decoded.shape == (80, 52)
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mel"):
        encode_to_codes(model, np.full((80, 4), np.nan, np.float32))


@pytest.mark.parametrize(
    "config",
    [
        CodecConfig(),
        CodecConfig(stride=2, latent_bits=4),
        CodecConfig(hidden=7, blocks=0, n_mels=13),
    ],
)
def test_analytic_parameter_count_matches_the_built_model(config: CodecConfig) -> None:
    assert config.parameter_count == parameter_count(new_model(config))


def test_receiver_builds_the_senders_codec_from_its_bundle() -> None:
    sender_config = CodecConfig(hidden=24, stride=2, latent_bits=4)
    sender = new_model(sender_config)
    bundle = bundle_from_state(
        state_to_numpy(sender),
        architecture_id=sender_config.architecture_id,
        round=0,
        sample_count=1,
    )
    receiver_copy = model_from_bundle(bundle, latent_bits=4)
    assert receiver_copy.config == CodecConfig(hidden=24, stride=2, latent_bits=4)
    mel = np.random.default_rng(1).normal(size=(80, 40)).astype(np.float32)
    codes = encode_to_codes(sender, mel)
    # int8 weights: close to, not equal to, the sender's own decode.
    assert np.abs(decode_codes(receiver_copy, codes) - decode_codes(sender, codes)).max() < 0.1
    huge = dataclasses.replace(bundle, architecture_id="csm-v1-m512-d512-h1024-b16-s16-k31-a0")
    with pytest.raises(InvalidBundleError, match="over the limit"):
        model_from_bundle(huge, latent_bits=4)
    with pytest.raises(InvalidBundleError, match="codec settings"):
        model_from_bundle(dataclasses.replace(bundle, architecture_id="evil"), latent_bits=4)
    with pytest.raises(InvalidBundleError, match="codec settings"):
        model_from_bundle(bundle, latent_bits=12)
