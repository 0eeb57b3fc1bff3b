"""``parley install-service``: a systemd user unit with restart on failure (issue 19)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys

import pytest

from daemon.service import render_user_unit
from simulations.node_helpers import make_home, short_root


def parley(*args: str, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_install_service_writes_a_unit_that_restarts_and_reloads(tmp_path):
    with short_root() as root:
        home, _ = make_home(root, "svc")
        units = tmp_path / "units"
        result = parley("install-service", "--home", str(home.root), "--unit-dir", str(units))
        assert result.returncode == 0, result.stderr
        unit_path = units / "parley.service"
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit_path.read_text())
        service = parser["Service"]
        assert service["Restart"] == "on-failure"
        assert service["RestartPreventExitStatus"] == "2"
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert service["ExecStart"] == (
            f'"{sys.executable}" "-m" "daemon.cli" "node" "--home" "{home.root.resolve()}"'
        )
        assert parser["Install"]["WantedBy"] == "default.target"
        again = parley("install-service", "--home", str(home.root), "--unit-dir", str(units))
        assert again.returncode == 2 and "already exists; use --force" in again.stderr
        printed = parley("install-service", "--home", str(home.root), "--print")
        assert printed.stdout == unit_path.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path):
    """systemd's own parser as the oracle, with a path that needs quoting."""
    home = tmp_path / "a home with 100% spaces"
    unit = tmp_path / "parley.service"
    unit.write_text(render_user_unit([sys.executable, "-m", "daemon.cli"], home=home))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "parley.service" in line and "network-online.target" not in line
    ]
    assert problems == [], result.stderr
