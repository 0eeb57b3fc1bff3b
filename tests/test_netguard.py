"""The network guard itself: it must block and fail on traffic that would leave the machine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.netguard import destination_allowed

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "address",
    [
        ("127.0.0.1", 80),
        ("127.5.6.7", 1),
        ("::1", 5, 0, 0),
        ("224.0.0.251", 5353),
        "/tmp/sock",
        ("localhost", 80),
        ("::ffff:127.0.0.1", 9, 0, 0),
    ],
)
def test_local_destinations_are_allowed(address):
    assert destination_allowed(address)


@pytest.mark.parametrize(
    "address",
    [
        ("192.0.2.1", 80),
        ("10.0.0.1", 80),
        ("8.8.8.8", 53),
        ("2001:db8::1", 80, 0, 0),
        ("224.0.0.1", 5353),
        ("example.org", 443),
        ("::ffff:192.0.2.1", 9, 0, 0),
        (),
    ],
)
def test_remote_destinations_are_refused(address):
    assert not destination_allowed(address)


def _run_pytest_on(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    test_dir = tmp_path / "guarded"
    test_dir.mkdir()
    (test_dir / "conftest.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.conftest import GUARD, _no_traffic_off_this_machine, pytest_sessionfinish\n"
    )
    (test_dir / "test_inner.py").write_text(textwrap.dedent(body))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:trio",
            str(test_dir),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_guard_fails_the_run_on_a_non_loopback_connect(tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737); the guard raises before the system call, so
    # nothing is sent even if this assertion were wrong.
    result = _run_pytest_on(
        tmp_path,
        """
        import socket
        def test_connect_out():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect(("192.0.2.1", 9))
            except Exception:
                pass  # even a swallowed violation must fail the run
            finally:
                s.close()
        """,
    )
    assert result.returncode != 0, result.stdout
    assert "would leave this machine" in result.stdout


def test_guard_lets_loopback_through(tmp_path):
    result = _run_pytest_on(
        tmp_path,
        """
        import socket
        def test_loopback():
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.bind(("127.0.0.1", 0))
            server.listen()
            client = socket.create_connection(server.getsockname())
            client.close()
            server.close()
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_offline_environment_is_set():
    import os

    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }.items():
        assert os.environ.get(name) == value, name
