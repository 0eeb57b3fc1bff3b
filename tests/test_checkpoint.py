"""Checkpoints: exact round trip, crash safety of the atomic write, corruption reported by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from codec.config import CodecConfig
from codec.errors import CheckpointError
from codec.model import new_model, state_to_numpy

CONFIG = CodecConfig(hidden=16, latent_bits=4, init_seed=5)


def _checkpoint(round_number: int, offset: float = 0.0) -> Checkpoint:
    state = {k: v + np.float32(offset) for k, v in state_to_numpy(new_model(CONFIG)).items()}
    return Checkpoint(
        codec_config=CONFIG,
        state=state,
        round=round_number,
        sample_count=1234,
        metadata={"source": "test", "l1": 0.25, "ok": True, "none": None},
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "codec.ckpt"
    original = _checkpoint(3, offset=0.5)
    save_checkpoint(path, original)
    loaded = load_checkpoint(path)
    assert loaded.codec_config == CONFIG
    assert (loaded.round, loaded.sample_count) == (3, 1234)
    assert dict(loaded.metadata) == dict(original.metadata)
    assert set(loaded.state) == set(original.state)
    for name, array in original.state.items():
        assert loaded.state[name].dtype == np.float32
        assert np.array_equal(loaded.state[name], array)
    assert b"pickle" not in path.read_bytes()[:8]
    assert [p.name for p in tmp_path.iterdir()] == ["codec.ckpt"]  # no temp files left


def test_a_failure_before_the_rename_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "codec.ckpt"
    save_checkpoint(path, _checkpoint(1))
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _checkpoint(2, offset=1.0))
    assert path.read_bytes() == before
    assert load_checkpoint(path).round == 1
    assert [p.name for p in tmp_path.iterdir()] == ["codec.ckpt"]


def test_a_failure_during_the_data_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "codec.ckpt"
    save_checkpoint(path, _checkpoint(1))

    def crash(descriptor: int) -> None:
        raise OSError("simulated disk failure during fsync")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _checkpoint(2))
    monkeypatch.undo()
    assert load_checkpoint(path).round == 1


def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """A real writer process saving in a loop is SIGKILLed; what remains must load."""
    path = tmp_path / "codec.ckpt"
    save_checkpoint(path, _checkpoint(0))
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
        path = Path({str(path)!r})
        base = load_checkpoint(path)
        Path({str(ready)!r}).touch()
        round_number = 0
        while True:
            round_number += 1
            state = {{k: v + round_number for k, v in base.state.items()}}
            save_checkpoint(path, Checkpoint(codec_config=base.codec_config, state=state,
                                             round=round_number, sample_count=1))
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert writer.poll() is None, "writer died"
            assert time.monotonic() < deadline, "writer never started"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    loaded = load_checkpoint(path)
    base = _checkpoint(0).state
    name = next(iter(base))
    np.testing.assert_allclose(loaded.state[name], base[name] + loaded.round, atol=1e-4)
    assert loaded.round > 0  # the writer did replace the file at least once


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    elif how == "truncate":
        del data[-100:]
    elif how == "magic":
        data[:8] = b"NOTPARLY"
    elif how == "empty":
        data = bytearray()
    elif how == "garbage":
        data = bytearray(os.urandom(500))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "magic", "empty", "garbage"])
def test_corruption_is_a_checkpoint_error_naming_the_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "my-codec.ckpt"
    save_checkpoint(path, _checkpoint(1))
    _corrupt(path, how)
    with pytest.raises(CheckpointError, match="my-codec.ckpt") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_well_hashed_but_inconsistent_header_is_refused(tmp_path: Path) -> None:
    """Re-sign a tampered header with a valid checksum: the semantic checks must still fire."""
    import hashlib
    import json
    import struct

    path = tmp_path / "codec.ckpt"
    save_checkpoint(path, _checkpoint(1))
    data = path.read_bytes()[:-32]
    (length,) = struct.unpack_from(">I", data, 8)
    header = json.loads(data[12 : 12 + length])
    header["codec_config"]["hidden"] = 17
    new_header = json.dumps(header).encode()
    body = data[:8] + struct.pack(">I", len(new_header)) + new_header + data[12 + length :]
    path.write_bytes(body + hashlib.blake2s(body).digest())
    with pytest.raises(CheckpointError, match="architecture id|tensor"):
        load_checkpoint(path)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="absent.ckpt"):
        load_checkpoint(tmp_path / "absent.ckpt")


def test_inconsistent_checkpoints_are_not_written(tmp_path: Path) -> None:
    bad = _checkpoint(1)
    state = dict(bad.state)
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="tensors"):
        save_checkpoint(tmp_path / "x", Checkpoint(codec_config=CONFIG, state=state))
    assert not (tmp_path / "x").exists()
