"""`parley node` as a real process: status over the socket, SIGTERM, a clean exit."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from simulations.node_helpers import make_home, short_root

pytestmark = pytest.mark.slow


def parley(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_node_process_status_and_sigterm():
    with short_root() as root:
        home, identity = make_home(root, "solo")
        home.config_path.write_text(
            '[listen]\nhost = "127.0.0.1"\nport = 7405\n[discovery]\nmdns = false\n'
            "[fl]\nround_interval_min = 0\n[web]\nenabled = false\n"
        )
        with socket_port() as port:
            pass  # a free port, released for the node
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "node",
                "--home",
                str(home.root),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not home.socket_path.exists():
                assert node.poll() is None, node.communicate()
                assert time.monotonic() < deadline, "the node never opened its status socket"
                time.sleep(0.1)
            result = parley("status", "--json", "--home", str(home.root))
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["status"]["node_id"] == identity.peer_id
            assert report["status"]["listen"] == f"127.0.0.1:{port}"
            assert report["peers"] == [] and report["rounds"] == []
            calls = report["status"]["calls"]
            assert (calls["active"], calls["max"], calls["recent"]) == (0, 8, [])
            assert calls["load"]["predicted_caption_delay_s"] == 0.0
            assert report["status"]["faults"]["total"] == 0
            human = parley("status", "--home", str(home.root))
            assert human.returncode == 0 and identity.peer_id in human.stdout
            assert "0 active (at most 8)" in human.stdout
            node.send_signal(signal.SIGTERM)
            _, stderr = node.communicate(timeout=30)
        finally:
            if node.poll() is None:
                node.kill()
                node.communicate()
        assert node.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "event=node.stopped" in stderr
        assert not home.socket_path.exists()
        # Secrets stay out of the logs.
        assert identity.private_key.hex() not in stderr


def test_status_without_a_node_is_one_line():
    with short_root() as root:
        home, _ = make_home(root, "idle")
        result = parley("status", "--home", str(home.root))
        # Like `tailscale status`: an answer, with its own exit code (3), not an error.
        assert result.returncode == 3
        assert result.stdout.strip().count("\n") == 0 and result.stderr == ""
        assert "not running" in result.stdout


def test_peers_trust_and_list_from_the_cli():
    with short_root() as root:
        home, _ = make_home(root, "cli")
        other = "ab" * 32
        result = parley("peers", "trust", other, "--home", str(home.root))
        assert result.returncode == 0, result.stderr
        listed = json.loads(parley("peers", "list", "--json", "--home", str(home.root)).stdout)
        expected_id = base64.b32encode(bytes.fromhex(other)).decode().rstrip("=").lower()
        assert [(row["id"], row["trust"]) for row in listed] == [(expected_id, "trusted")]
        result = parley("peers", "untrust", listed[0]["id"][:16], "--home", str(home.root))
        assert result.returncode == 0, result.stderr
        listed = json.loads(parley("peers", "list", "--json", "--home", str(home.root)).stdout)
        assert listed[0]["trust"] == "known"
        unknown = parley("peers", "trust", "nobody", "--home", str(home.root))
        assert unknown.returncode == 2
        assert "no known peer named 'nobody'" in unknown.stderr


class socket_port:
    """A free TCP port on loopback (closed again before the node binds it)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


if os.name != "posix":  # pragma: no cover
    pytest.skip("POSIX signals and Unix sockets", allow_module_level=True)
