"""``parley doctor`` (issue 11, item 9): a damaged home gets a clear finding, the fix, and a
nonzero exit; a healthy one exits 0. Oracle for the database: SQLite's own integrity check on a
file whose pages we overwrite."""

from __future__ import annotations

import json
import os

import pytest

from codec.config import CodecConfig
from daemon.cli import main
from daemon.codec_store import CodecStore
from daemon.database import DatabaseCorruptError, PeerStore, open_database
from daemon.doctor import Severity, examine_home
from daemon.home import NodeHome
from simulations.node_helpers import make_home


def _doctor(home: NodeHome, capsys) -> tuple[int, list[dict[str, object]]]:
    with pytest.raises(SystemExit) as done:
        main(["doctor", "--home", str(home.root), "--json"])
        raise SystemExit(0)
    findings = json.loads(capsys.readouterr().out)
    return int(done.value.code or 0), findings


def _healthy_home(tmp_path) -> NodeHome:
    home, _ = make_home(tmp_path, "home")
    os.chmod(home.config_path, 0o600)
    CodecStore(home.models_dir, home.features_dir, CodecConfig()).current()
    with open_database(home.database_path) as database:
        PeerStore(database).all()
    return home


def test_a_healthy_home_passes(tmp_path, capsys):
    home = _healthy_home(tmp_path)
    code, findings = _doctor(home, capsys)
    assert code == 0, findings
    assert {f["check"] for f in findings} == {
        "identity",
        "config",
        "database",
        "checkpoint",
        "file modes",
    }
    assert all(f["severity"] == "ok" for f in findings), findings


def test_a_corrupt_database_is_found_with_its_fix_and_the_node_says_run_doctor(tmp_path, capsys):
    home = _healthy_home(tmp_path)
    with open_database(home.database_path) as database:
        store = PeerStore(database)
        for index in range(200):  # enough rows for several pages
            from daemon.database import PeerSource
            from daemon.peers import PeerTable

            PeerTable(store, ttl=60).observe(
                bytes([index]) * 32, name=f"peer{index}", address=None, source=PeerSource.MDNS
            )
    data = bytearray(home.database_path.read_bytes())
    page = 4096
    data[2 * page : 4 * page] = os.urandom(2 * page)  # two pages of the b-trees overwritten
    home.database_path.write_bytes(bytes(data))
    code, findings = _doctor(home, capsys)
    assert code == 1
    database = next(f for f in findings if f["check"] == "database")
    assert database["severity"] == "problem"
    assert "mv " in str(database["fix"]) and "node.db.broken" in str(database["fix"])
    with pytest.raises(DatabaseCorruptError, match="parley doctor"):
        open_database(home.database_path)


def test_an_open_identity_and_a_damaged_checkpoint_are_reported(tmp_path):
    home = _healthy_home(tmp_path)
    os.chmod(home.identity_path, 0o644)
    path = home.models_dir / "codec.ckpt"
    path.write_bytes(path.read_bytes()[:-10])
    findings = {finding.check: finding for finding in examine_home(home)}
    assert findings["identity"].severity is Severity.PROBLEM
    assert findings["identity"].fix == f"chmod 600 {home.identity_path}"
    # No previous generation yet (the first start): the model would be lost.
    assert findings["checkpoint"].severity is Severity.PROBLEM
    assert "no previous generation" in findings["checkpoint"].message
    assert findings["file modes"].severity is Severity.PROBLEM
    assert "identity.key (0644)" in findings["file modes"].message


def test_a_missing_home_is_one_finding(tmp_path):
    findings = examine_home(NodeHome(tmp_path / "nowhere"))
    assert [f.severity for f in findings] == [Severity.PROBLEM]
    assert "parley init" in str(findings[0].fix)
