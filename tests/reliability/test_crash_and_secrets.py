"""Crash consistency (``kill -9`` mid-round and mid-job) and secrets at rest and in logs.

Budget (CI): 5 kills of a real ``parley node`` process (4 during FL rounds with a trusted
peer, 1 during a caption job), 6 starts, then one caption job to completion (about 60 s);
the bench runs 100 kills. The secrets checks run on the homes and logs the crash run left:
every file a node writes (database and its WAL, checkpoints, peer bundles, caption outputs)
is 0600, every folder 0700, and no form of the private key appears in any log or status.
"""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.identity import load_identity
from simulations.node_helpers import short_root
from simulations.reliability.process_nodes import CrashReport, run_crash_trials
from tests.speech import synthesize_speech

pytestmark = pytest.mark.slow

TRIALS = 5


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CrashReport, Path]]:
    wav = synthesize_speech(
        "Crash consistency needs a job that takes a few seconds to caption.",
        tmp_path_factory.mktemp("crash") / "speech.wav",
    )
    with short_root() as root:
        report = run_crash_trials(
            root, trials=TRIALS, speech_wav=wav, seed=1, caption_every=4, final_caption=True
        )
        yield report, root


def test_every_restart_after_kill_9_loads_and_loses_nothing(
    crash_run: tuple[CrashReport, Path],
) -> None:
    report, _ = crash_run
    shown = report.as_dict()
    assert report.problems == [], shown
    assert report.trials == TRIALS and report.loadable == TRIALS, shown
    assert report.lost_rounds == 0, shown
    # The kills really hit work in progress: rounds completed around them.
    assert report.rounds_completed >= 1, shown
    assert report.jobs_back_to_pending == report.jobs_killed_midway, shown


def _key_forms(raw: bytes) -> list[str]:
    return [
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b32encode(raw).decode().rstrip("="),
        base64.b32encode(raw).decode().rstrip("=").lower(),
    ]


def test_files_in_the_home_are_private(crash_run: tuple[CrashReport, Path]) -> None:
    _, root = crash_run
    exposed = []
    for name in ("a", "b"):
        home = root / name
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        kinds = set()
        for path in sorted(home.rglob("*")):
            mode = stat.S_IMODE(path.lstat().st_mode)
            relative = path.relative_to(home)
            if path.is_dir():
                if mode != 0o700:
                    exposed.append(f"{name}/{relative}/ {oct(mode)}")
            elif path.is_file():
                if path.name == "config.toml":
                    continue  # written by the test with the default umask, not by the node
                if mode & 0o077:
                    exposed.append(f"{name}/{relative} {oct(mode)}")
                kinds.add(path.suffix or path.name)
        assert {".key", ".db", ".ckpt", ".bundle"} <= kinds, kinds
    assert exposed == [], "readable by others: " + ", ".join(exposed)
    # Caption outputs of the final job, under node a's home.
    assert list((root / "a" / "captions").rglob("*.srt"))


def test_identity_checkpoint_and_peer_bundles_are_private(
    crash_run: tuple[CrashReport, Path],
) -> None:
    """The home folder and the identity key, checked on their own."""
    _, root = crash_run
    for name in ("a", "b"):
        home = root / name
        files = [home / "identity.key", *home.glob("models/*.ckpt"), *home.rglob("*.bundle")]
        assert len(files) >= 3, files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for folder in (home, home / "models", home / "features", *home.glob("models/peers/*")):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_no_key_material_in_logs_or_status(crash_run: tuple[CrashReport, Path]) -> None:
    report, root = crash_run
    logs = "".join(path.read_text(errors="replace") for path in root.glob("*.log"))
    assert "event=node.started" in logs and "round.done" in logs
    assert report.final_status
    for name in ("a", "b"):
        raw = load_identity(root / name / "identity.key").private_key
        for form in _key_forms(raw):
            assert form not in logs, f"a form of {name}'s private key is in the logs"
            assert form not in report.final_status, f"{name}'s private key is in the status"
