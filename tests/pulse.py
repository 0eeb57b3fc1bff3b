"""A real PulseAudio sound server for tests: a user daemon in a temporary runtime folder.

No system service and no real hardware: ``pulseaudio -n`` loads only the modules named here
(the native protocol on a unix socket in ``XDG_RUNTIME_DIR``, null sinks as speakers, remapped
sink monitors as microphones). Programs reach it through PortAudio's ALSA ``pulse`` device
(Debian ``libasound2-plugins``) exactly as on a laptop; ``PULSE_SINK``/``PULSE_SOURCE`` choose
the sink and source. The daemon is stopped by its PID when the context ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pytest

START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PulseServer:
    runtime_dir: Path
    env: dict[str, str]

    def play_file(self, sink: str, wav: Path) -> subprocess.Popen[bytes]:
        """``paplay`` into ``sink`` (an independent way in: PulseAudio's own client)."""
        return subprocess.Popen(["paplay", f"--device={sink}", str(wav)], env=self.env)

    def record(self, source: str, rate_hz: int, into: Path) -> Recording:
        """``parec`` from ``source`` into ``into`` (raw mono float32 at ``rate_hz``); returns
        once audio flows (the capture path takes about a second to start here)."""
        out = into.open("wb")
        process = subprocess.Popen(
            [
                "parec",
                f"--device={source}",
                "--format=float32le",
                "--channels=1",
                f"--rate={rate_hz}",
                "--latency-msec=20",
            ],
            env=self.env,
            stdout=out,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while into.stat().st_size == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                out.close()
                pytest.fail(f"parec recorded nothing from {source}")
            time.sleep(0.05)
        return Recording(process, out, into)


@dataclass(frozen=True)
class Recording:
    process: subprocess.Popen[bytes]
    out: BinaryIO
    path: Path

    def peek(self) -> npt.NDArray[np.float32]:
        """What was recorded so far (the recording goes on)."""
        self.out.flush()
        return self._read()

    def stop(self) -> npt.NDArray[np.float32]:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        finally:
            self.out.close()
        return self._read()

    def _read(self) -> npt.NDArray[np.float32]:
        data = self.path.read_bytes()
        usable = len(data) - len(data) % 4
        return np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)


def require_pulseaudio() -> None:
    for tool in ("pulseaudio", "paplay", "parec"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make test` installs pulseaudio (see the Makefile)")


@contextmanager
def pulse_server(
    root: Path, *, sinks: tuple[str, ...], microphones: dict[str, str]
) -> Iterator[PulseServer]:
    """Start PulseAudio with a null sink per name in ``sinks`` and, per ``microphones`` entry
    ``source -> sink``, a source that hears what is played into that sink."""
    require_pulseaudio()
    runtime = root / "pulse-runtime"
    runtime.mkdir(mode=0o700)
    script = ["load-module module-native-protocol-unix auth-anonymous=1"]
    script += [f"load-module module-null-sink sink_name={sink} rate=48000" for sink in sinks]
    script += [
        f"load-module module-remap-source source_name={source} master={sink}.monitor channels=1"
        for source, sink in microphones.items()
    ]
    config = runtime / "default.pa"
    config.write_text("\n".join(script) + "\n")
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "HOME": str(runtime),
        "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
    }
    env.pop("PULSE_SERVER", None)
    log = (runtime / "pulseaudio.log").open("wb")
    daemon = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--system=no",
            f"--file={config}",
            "--log-target=stderr",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if daemon.poll() is not None:
                pytest.fail(
                    "pulseaudio exited at start: "
                    + (runtime / "pulseaudio.log").read_text(errors="replace")[-2000:]
                )
            ready = subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=10)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail("pulseaudio did not answer within 15 s")
            time.sleep(0.1)
        yield PulseServer(runtime, env)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        log.close()


@contextmanager
def pulse_environment(monkeypatch: pytest.MonkeyPatch, server: PulseServer) -> Iterator[None]:
    """This process talks to ``server`` (PortAudio's ALSA ``pulse`` device reads these)."""
    for key in ("XDG_RUNTIME_DIR", "HOME", "PULSE_RUNTIME_PATH"):
        monkeypatch.setenv(key, server.env[key])
    monkeypatch.delenv("PULSE_SERVER", raising=False)
    yield
