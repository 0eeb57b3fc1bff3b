"""No silent loss of the model (issue 11, item 9): checkpoint generations, a fallback with a
warning, and a deleted checkpoint that is restored or re-initialised loudly."""

from __future__ import annotations

import logging

import pytest

from codec.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_with_fallback,
    previous_path,
    save_checkpoint,
)
from codec.config import CodecConfig
from codec.errors import CheckpointError
from daemon.codec_store import CodecStore

CONFIG = CodecConfig()


def _store(tmp_path) -> CodecStore:
    (tmp_path / "models").mkdir(parents=True, exist_ok=True)
    return CodecStore(tmp_path / "models", tmp_path / "features", CONFIG)


def _next_round(store: CodecStore) -> Checkpoint:
    ours = store.current().checkpoint
    return Checkpoint(
        codec_config=ours.codec_config,
        state={name: value * 1.01 for name, value in ours.state.items()},
        round=ours.round + 1,
        sample_count=ours.sample_count,
    )


def test_save_keeps_the_previous_intact_generation(tmp_path):
    store = _store(tmp_path)
    first = store.current()
    store.save(_next_round(store))
    previous = load_checkpoint(previous_path(store.checkpoint_path))
    assert previous.round == first.checkpoint.round
    # A damaged current file never becomes the previous generation.
    store.checkpoint_path.write_bytes(b"garbage")
    save_checkpoint(store.checkpoint_path, _next_round_from(previous))
    assert load_checkpoint(previous_path(store.checkpoint_path)).round == previous.round


def _next_round_from(checkpoint: Checkpoint) -> Checkpoint:
    return Checkpoint(
        codec_config=checkpoint.codec_config,
        state=checkpoint.state,
        round=checkpoint.round + 5,
    )


def test_a_corrupt_checkpoint_falls_back_to_the_previous_generation_with_a_warning(
    tmp_path, caplog
):
    store = _store(tmp_path)
    store.current()
    store.save(_next_round(store))  # round 1; round 0 is now the previous generation
    data = bytearray(store.checkpoint_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit's worth of damage
    store.checkpoint_path.write_bytes(bytes(data))
    fresh = _store(tmp_path)  # the next start of the node
    with caplog.at_level(logging.WARNING):
        ours = fresh.current()
    assert ours.checkpoint.round == 0
    assert "restored the previous generation (round 0)" in fresh.warnings[-1]
    assert "codec.recovered" in caplog.text
    assert (tmp_path / "models" / "codec.ckpt.corrupt").exists()  # kept for a look
    assert load_checkpoint(fresh.checkpoint_path).round == 0  # and the file is whole again


def test_a_deleted_checkpoint_is_restored_from_the_previous_generation(tmp_path):
    store = _store(tmp_path)
    store.current()
    store.save(_next_round(store))
    store.checkpoint_path.unlink()
    fresh = _store(tmp_path)
    assert fresh.current().checkpoint.round == 0
    assert "is missing; restored the previous generation" in fresh.warnings[-1]


def test_a_deleted_checkpoint_without_a_previous_generation_is_never_silent(tmp_path):
    store = _store(tmp_path)
    store.current()  # first start: no previous generation yet
    store.checkpoint_path.unlink()
    fresh = _store(tmp_path)
    fresh.current()
    assert fresh.warnings and "personalised model is lost" in fresh.warnings[-1]
    # A true first start says nothing.
    other = _store(tmp_path / "other")
    other.current()
    assert other.warnings == []


def test_load_with_fallback_names_both_problems_when_nothing_is_usable(tmp_path):
    path = tmp_path / "codec.ckpt"
    path.write_bytes(b"garbage")
    previous_path(path).write_bytes(b"also garbage")
    with pytest.raises(CheckpointError, match="previous generation too"):
        load_with_fallback(path)
