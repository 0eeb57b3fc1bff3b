"""A fresh home can call: the shipped starting codec is ours until we enroll (issue 14, item 6).

Before, ``parley call`` from a home that had only been through ``parley init`` stopped with
"no codec in HOME: run 'parley enroll' (or start the node once) first".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from codec.checkpoint import load_checkpoint
from daemon.home import NodeHome
from tests.speech import synthesize_speech


def parley(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_init_gives_the_home_the_shipped_starting_codec(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "home")
    result = parley("init", "--home", str(home.root))
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(home.models_dir / "codec.ckpt")
    assert checkpoint.metadata.get("source") == "pretrained"


def test_a_fresh_home_gets_past_the_codec_to_dialing(tmp_path: Path) -> None:
    home = NodeHome(tmp_path / "home")
    assert parley("init", "--home", str(home.root)).returncode == 0
    other = NodeHome(tmp_path / "other")
    assert parley("init", "--home", str(other.root)).returncode == 0
    their_key = parley("id", "--home", str(other.root)).stdout.split("public key")[1].split()[0]
    trusted = parley("peers", "trust", their_key, "--home", str(home.root))
    assert trusted.returncode == 0, trusted.stderr
    speech = synthesize_speech(
        "Hello, this is a short call from a brand new home.", tmp_path / "hello.wav"
    )
    port = closed_port()
    result = parley(
        "call",
        f"127.0.0.1:{port}:{their_key}",
        "--in",
        str(speech),
        "--lang",
        "pt",
        "--out",
        str(tmp_path / "out"),
        "--home",
        str(home.root),
    )
    # Nobody listens on that port: the call gets as far as dialing, and fails there.
    assert "no codec" not in result.stderr
    # One line, no traceback (an unreachable peer is a runtime failure: exit code 1).
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("parley: unreachable"), result.stderr
    assert "Traceback" not in result.stderr
