"""The CLI in ordinary situations (issue 19): one line and a meaningful exit code instead of a
traceback, help everywhere, settings with their sources, and a node that says it is down.

Each test runs ``python -m daemon.cli`` in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from daemon.config import Config, config_from_mapping
from simulations.node_helpers import make_home, short_root

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and Unix sockets")

OTHER_KEY = "ab" * 32


def parley(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_process(capsys, *args: str) -> subprocess.CompletedProcess[str]:
    """``daemon.cli.main`` in this process (no interpreter start-up), as a CompletedProcess."""
    from daemon.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failure (and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local_home(root: Path, name: str, *, extra: str = ""):
    home, identity = make_home(root, name)
    home.config_path.write_text(
        '[listen]\nhost = "127.0.0.1"\n[discovery]\nmdns = false\n'
        "[fl]\nround_interval_min = 0\n" + extra
    )
    return home, identity


def start_node(home, *args: str) -> subprocess.Popen[str]:
    node = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "node", "--home", str(home.root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not home.socket_path.exists():
        if node.poll() is not None:
            raise AssertionError(node.communicate())
        assert time.monotonic() < deadline, "the node never opened its status socket"
        time.sleep(0.1)
    return node


def stop_node(node: subprocess.Popen[str]) -> str:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
    try:
        _, stderr = node.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        _, stderr = node.communicate()
    return stderr


# --- rough edge 2 and 3: one line, exit 2 for bad input, 1 for a runtime failure ------------


@pytest.mark.parametrize("port", ["-1", "70000", "0"])
def test_a_bad_port_flag_is_checked_like_the_config_file(port, capsys):
    with short_root() as root:
        home, _ = local_home(root, "flag")
        result = in_process(capsys, "config", "--home", str(home.root), "--port", port)
        assert result.returncode == 2
        assert one_line(result) == f"parley: --port: must be 1..65535, got {port}"


def test_node_refuses_a_bad_port_flag(capsys):
    with short_root() as root:
        home, _ = local_home(root, "flag")
        # -1 in this process (it used to end in a socket.gaierror traceback); 70000 in a
        # subprocess with a timeout, since it used to start a node on the config's port.
        for port, result in (
            ("-1", in_process(capsys, "node", "--home", str(home.root), "--port", "-1")),
            ("70000", parley("node", "--home", str(home.root), "--port", "70000")),
        ):
            assert result.returncode == 2
            assert one_line(result) == f"parley: --port: must be 1..65535, got {port}"
        assert not home.socket_path.exists()


def test_a_port_in_use_is_one_line_and_exit_1():
    with short_root() as root, socket.socket() as taken:
        home, _ = local_home(root, "busy")
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = parley("node", "--home", str(home.root), "--port", str(port))
        assert result.returncode == 1
        assert one_line(result) == (
            f"parley: cannot listen on 127.0.0.1:{port}: address already in use"
        )


@pytest.mark.slow
def test_a_running_node_second_node_status_round_reload_and_log_file():
    """One real node serves several checks (starting one takes seconds)."""
    with short_root() as root:
        home, identity = local_home(root, "solo")
        log_file = root / "logs" / "node.log"
        node = start_node(home, "--port", str(free_port()), "--log-file", str(log_file))
        try:
            # A second node on the same home: one line, exit 1, and the first is untouched.
            second = parley("node", "--home", str(home.root), "--port", str(free_port()))
            assert second.returncode == 1
            assert one_line(second) == (
                f"parley: another node is already running with home {home.root} "
                f"(its socket {home.socket_path} answers)"
            )
            assert node.poll() is None

            # status answers with the version; round speaks human or JSON.
            status = parley("status", "--json", "--home", str(home.root))
            assert status.returncode == 0, status.stderr
            report = json.loads(status.stdout)
            assert report["running"] is True
            assert report["version"] == version("parley")
            assert report["status"]["node_id"] == identity.peer_id
            assert report["status"]["version"] == version("parley")
            requested = parley("round", "--home", str(home.root))
            assert requested.returncode == 0, requested.stderr
            assert requested.stdout.startswith("round requested")

            # The log file gets the node's lines; SIGHUP applies a new level.
            assert "event=node.started" in log_file.read_text()
            text = home.config_path.read_text()
            home.config_path.write_text(text + '[node]\nlog_level = "debug"\n')
            node.send_signal(signal.SIGHUP)
            wait_for_line(log_file, "event=config.reloaded applied=node.log_level")
            # A config that no longer loads is refused; the node goes on.
            home.config_path.write_text(
                text.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 70000')
            )
            node.send_signal(signal.SIGHUP)
            wait_for_line(log_file, "listen.port: must be 1..65535, got 70000")
            # FL settings apply from the next round; one that needs a restart is named.
            # (The debug level stays: a reload is compared with the config last applied.)
            home.config_path.write_text(
                text.replace("round_interval_min = 0", "round_interval_min = 0\nalpha = 0.5")
                + '[node]\nlog_level = "debug"\n'
                + "[call]\nbatch_ms = 200\n"
            )
            node.send_signal(signal.SIGHUP)
            wait_for_line(log_file, "event=config.reloaded applied=fl.alpha")
            wait_for_line(log_file, "event=config.reload_needs_restart settings=call.batch_ms")
            after = parley("round", "--wait", "--json", "--home", str(home.root))
            assert after.returncode == 0, after.stderr
            assert json.loads(after.stdout)["alpha"] == 0.5
        finally:
            stderr = stop_node(node)
        assert node.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "event=node.stopped" in log_file.read_text()


def wait_for_line(path: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged: {path.read_text()}"
        time.sleep(0.1)


# --- rough edge 5: a missing home, our own key, a peer never seen ---------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["peers", "list"],
        ["peers", "trust", OTHER_KEY],
        ["peers", "untrust", "someone"],
        ["id"],
        ["status"],
        ["node"],
        ["round"],
    ],
)
def test_commands_on_a_missing_home_say_run_init(command, capsys):
    with short_root() as root:
        missing = root / "nowhere"
        result = in_process(capsys, *command, "--home", str(missing))
        assert result.returncode == 2
        assert one_line(result) == f"parley: no node home at {missing}: run `parley init`"
        assert not missing.exists()


def test_trusting_our_own_key_is_refused(capsys):
    with short_root() as root:
        home, identity = local_home(root, "self")
        for key in (identity.public_key.hex(), identity.peer_id):
            result = in_process(capsys, "peers", "trust", key, "--home", str(home.root))
            assert result.returncode == 2
            assert "this node's own key" in one_line(result)
        listed = in_process(capsys, "peers", "list", "--json", "--home", str(home.root))
        assert json.loads(listed.stdout) == []


def test_a_peer_trusted_before_it_was_seen_shows_never_seen(capsys):
    with short_root() as root:
        home, _ = local_home(root, "early")
        trusted = in_process(capsys, "peers", "trust", OTHER_KEY, "--home", str(home.root))
        assert trusted.returncode == 0
        listed = in_process(capsys, "peers", "list", "--json", "--home", str(home.root))
        rows = json.loads(listed.stdout)
        assert rows[0]["trust"] == "trusted" and rows[0]["last_seen"] is None
        table = in_process(capsys, "peers", "list", "--home", str(home.root)).stdout
        assert "0s ago" not in table and "never" in table


# --- rough edge 7: help, -h, --version, completion ------------------------------------------


def all_commands() -> list[list[str]]:
    import typer.main

    from daemon.cli import app

    found: list[list[str]] = []

    def walk(command, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_parley_alone_and_every_group_alone_show_help_with_exit_0():
    import click
    import typer.main

    from daemon.cli import app

    root = typer.main.get_command(app)
    groups = [[]] + [[name] for name, sub in root.commands.items() if isinstance(sub, click.Group)]
    assert ["peers"] in groups
    for group in groups:
        result = parley(*group)
        assert result.returncode == 0, (group, result.stderr)
        assert "Usage: parley" in result.stdout


def test_dash_h_works_like_help_on_every_command():
    from typer.testing import CliRunner

    from daemon.cli import app

    runner = CliRunner()
    for command in all_commands():
        long = runner.invoke(app, [*command, "--help"], prog_name="parley")
        short = runner.invoke(app, [*command, "-h"], prog_name="parley")
        assert long.exit_code == 0, (command, long.output)
        assert short.exit_code == 0 and short.output == long.output, command


def test_version_and_shell_completion():
    result = parley("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"parley {version('parley')}"
    completion = parley("--show-completion", "bash")
    assert completion.returncode == 0, completion.stderr
    assert "_PARLEY_COMPLETE" in completion.stdout
    assert "--install-completion" in parley("--help").stdout


# --- rough edge 4 and 8: config as TOML with sources, --json ---------------------------------


def test_config_prints_toml_with_sources_and_json():
    with short_root() as root:
        home, _ = local_home(root, "conf")
        result = parley("config", "--home", str(home.root), "--port", "7999")
        assert result.returncode == 0, result.stderr
        settings = config_from_mapping(tomllib.loads(result.stdout))
        expected = (
            Config()
            .replace("listen", host="127.0.0.1", port=7999)
            .replace("discovery", mdns=False)
            .replace("fl", round_interval_min=0)
        )
        assert settings == expected
        assert 'host = "127.0.0.1"  # file' in result.stdout
        assert "port = 7999  # flag --port" in result.stdout
        assert "alpha = 0.7  # default" in result.stdout
        document = json.loads(
            parley("config", "--json", "--home", str(home.root), "--port", "7999").stdout
        )
        assert document["listen"]["port"] == {"value": 7999, "source": "flag", "flag": "--port"}
        assert document["listen"]["host"] == {"value": "127.0.0.1", "source": "file"}
        assert document["fl"]["alpha"] == {"value": 0.7, "source": "default"}
        home.config_path.write_text('[call]\nlanguage = "klingon"\n')
        refused = parley("config", "--home", str(home.root))
        assert refused.returncode == 2
        assert "call.language: must be a language tag Whisper knows" in one_line(refused)


def test_init_and_id_have_json():
    with short_root() as root:
        fresh = root / "fresh"
        created = json.loads(parley("init", "--json", "--home", str(fresh)).stdout)
        assert created["home"] == str(fresh)
        shown = json.loads(parley("id", "--json", "--home", str(fresh)).stdout)
        assert shown["peer_id"] == created["peer_id"]
        home, identity = local_home(root, "ident")
        result = parley("id", "--json", "--home", str(home.root))
        assert json.loads(result.stdout) == {
            "peer_id": identity.peer_id,
            "public_key": identity.public_key.hex(),
        }


@pytest.mark.slow
def test_enroll_has_json(tmp_path):
    from tests.speech import SPEECH_TEXT, synthesize_speech

    with short_root() as root:
        home, _ = local_home(root, "enrolled")
        speech = synthesize_speech(SPEECH_TEXT, tmp_path / "speech.wav")
        result = parley("enroll", str(speech), "--steps", "2", "--json", "--home", str(home.root))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["recordings"] == 1 and report["speech_s"] > 1
        assert report["mel_l1_before"] > 0 and report["kbps"] > 0


# --- operating: status of a node that is down ------------------------------------------------


def test_status_of_a_node_that_is_down_answers_with_exit_3():
    with short_root() as root:
        home, _ = local_home(root, "down")
        human = parley("status", "--home", str(home.root))
        assert human.returncode == 3
        assert "not running" in human.stdout and human.stderr == ""
        machine = parley("status", "--json", "--home", str(home.root))
        assert machine.returncode == 3
        report = json.loads(machine.stdout)
        assert report["running"] is False and report["home"] == str(home.root)


# --- rough edge 6: a call to an unreachable peer ---------------------------------------------


@pytest.mark.slow
def test_a_call_to_an_unreachable_peer_fails_first_and_writes_nothing(tmp_path):
    from codec.config import CodecConfig
    from daemon.codec_store import CodecStore
    from tests.speech import SPEECH_TEXT, synthesize_speech

    with short_root() as root:
        home, _ = local_home(root, "caller")
        CodecStore(home.models_dir, home.features_dir, CodecConfig()).current()
        assert parley("peers", "trust", OTHER_KEY, "--home", str(home.root)).returncode == 0
        speech = synthesize_speech(SPEECH_TEXT, tmp_path / "speech.wav")
        out = tmp_path / "call-out"
        port = free_port()  # nothing listens there
        result = parley(
            "call",
            f"127.0.0.1:{port}:{OTHER_KEY}",
            "--in",
            str(speech),
            "--lang",
            "pt",
            "--out",
            str(out),
            "--home",
            str(home.root),
        )
        assert result.returncode == 1
        line = one_line(result)
        assert line.startswith(f"parley: unreachable: 127.0.0.1:{port}: ")
        assert not out.exists()


def test_a_relative_log_file_is_inside_the_home_and_a_flag_is_relative_to_where_it_runs(
    capsys, monkeypatch
):
    from daemon.reload import node_log_path

    with short_root() as root:
        home, _ = local_home(root, "logs")
        assert node_log_path(home, Config()) is None
        in_config = Config().replace("node", log_file="logs/node.log")
        assert node_log_path(home, in_config) == home.root / "logs" / "node.log"
        absolute = Config().replace("node", log_file="/var/tmp/parley.log")
        assert node_log_path(home, absolute) == Path("/var/tmp/parley.log")
        monkeypatch.chdir(root)
        shown = in_process(
            capsys, "config", "--json", "--home", str(home.root), "--log-file", "x.log"
        )
        assert json.loads(shown.stdout)["node"]["log_file"]["value"] == str(root / "x.log")
