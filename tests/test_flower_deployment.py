"""The Flower app on the deployment engine: a SuperLink, two SuperNodes and `flwr run`, loopback.

The processes Flower starts (SuperLink, SuperNodes, their SuperExecs, the ServerApp and
ClientApp processes) are outside this test's audit hook, so each gets the same network guard
through a ``sitecustomize`` on its PYTHONPATH; any connect or sendto off this machine is written
to a file this test reads (and fails the Flower process that tried it).
"""

from __future__ import annotations

import common.offline  # noqa: F401

import os
import time
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # typer (imported by flwr) uses a click helper click 8.5 deprecates; not parley's warning.
    warnings.simplefilter("ignore", DeprecationWarning)
    from fl.flower_app import FlowerAppError, FlowerRunError
    from simulations.flower_sim import (
        SMALL_RUN_CONFIG,
        run_flower_deployment,
        superlink_command,
        supernode_command,
    )

REPO = Path(__file__).resolve().parent.parent

SITECUSTOMIZE = """
import os, sys
sys.path.insert(0, {repo!r})
from tests.netguard import NetworkGuard

class _LoggingGuard(NetworkGuard):
    def __call__(self, event, args):
        try:
            super().__call__(event, args)
        except Exception as error:
            with open(os.environ["PARLEY_NETGUARD_LOG"], "a") as log:
                log.write(f"{{os.getpid()}} {{sys.argv[:2]}}: {{error}}\\n")
            raise

sys.addaudithook(_LoggingGuard())
"""


@pytest.fixture
def guarded_subprocesses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(SITECUSTOMIZE.format(repo=str(REPO)))
    log = tmp_path / "netguard.log"
    log.touch()
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(guard_dir), existing])))
    monkeypatch.setenv("PARLEY_NETGUARD_LOG", str(log))
    return log


def _processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment contains ``marker``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def _wait_until_gone(marker: str, timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def test_commands_bind_loopback_and_never_install_dependencies() -> None:
    superlink = superlink_command(host="127.0.0.1", port=9100)
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1"
    assert "--disable-runtime-dependency-installation" in superlink
    supernode = supernode_command(
        superlink="127.0.0.1:9100", host="127.0.0.1", port=9101, partition_id=1, num_partitions=2
    )
    assert supernode[supernode.index("--host") + 1] == "127.0.0.1"
    assert supernode[supernode.index("--node-config") + 1] == "partition-id=1 num-partitions=2"
    assert "--allow-runtime-dependency-installation" not in supernode


def test_bad_run_config_fails_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(FlowerAppError, match="unknown run config keys"):
        run_flower_deployment(nodes=2, rounds=1, out_dir=tmp_path, run_config={"steps": 3})
    assert not (tmp_path / "superlink.log").exists()


@pytest.mark.slow
def test_superlink_two_supernodes_and_flwr_run_complete_a_round(
    tmp_path: Path, guarded_subprocesses: Path
) -> None:
    report = run_flower_deployment(
        nodes=2, rounds=1, alpha=0.6, seed=4, out_dir=tmp_path, run_config=SMALL_RUN_CONFIG
    )
    (entry,) = report["per_round"]
    assert entry["replies"] == entry["evaluate_replies"] == 2
    assert entry["participants"] == 2 and entry["rejected"] == [] and entry["failures"] == []
    for key in ("local_only_loss", "global_loss", "personal_loss"):
        assert 0.0 < entry[key] < 5.0
    assert report["superlink"].startswith("127.0.0.1:")
    # Every Flower process of this run is gone: they all carry our private FLWR_HOME.
    assert _wait_until_gone(str(tmp_path / "flwr-home")) == []
    assert guarded_subprocesses.read_text() == ""


@pytest.mark.slow
def test_a_failed_submission_still_stops_every_process(
    tmp_path: Path, guarded_subprocesses: Path
) -> None:
    # The SuperLink and SuperNodes are up when `flwr run` fails (no Flower app in that folder):
    # the error must name the cause and every process must still be stopped.
    empty = tmp_path / "no-app"
    empty.mkdir()
    with pytest.raises(FlowerRunError, match="flwr run failed"):
        run_flower_deployment(
            nodes=2, rounds=1, out_dir=tmp_path / "run", run_config=SMALL_RUN_CONFIG, app_dir=empty
        )
    assert (tmp_path / "run" / "supernode-1.log").exists()
    assert _wait_until_gone(str(tmp_path / "run" / "flwr-home")) == []
    assert guarded_subprocesses.read_text() == ""
