"""Run parley's Flower app (:mod:`fl.flower_app`) on Flower's two runtimes.

* **Simulation runtime** (:func:`run_flower_simulation`): ``flwr.simulation.run_simulation`` with
  the Ray backend, in this process. Ray is bound to 127.0.0.1 with no dashboard and quiet logs;
  the ServerApp runs in a thread here, the ClientApps in Ray worker processes (which re-import
  :mod:`fl.flower_app`).
* **Deployment engine** (:func:`run_flower_deployment` and the command builders below): one
  ``flower-superlink``, N ``flower-supernode`` processes and ``flwr run`` against the app folder
  ``simulations/flower_project``. On one box everything listens on 127.0.0.1 with explicit ports;
  across machines the same commands run with the SuperLink's ``--host`` set to an address the
  SuperNodes can reach.

Both fail loudly: Flower logs a failed or missing client and carries on, so every round's reply
count is checked (in the strategy, and again here) and a short round is a
:class:`~fl.flower_app.FlowerRunError`.

Offline: :mod:`common.offline` turns off Flower's telemetry and update check and Ray's usage
stats before either is imported; SuperLinks start with ``--disable-runtime-dependency-installation``
(SuperNodes install nothing unless given ``--allow-runtime-dependency-installation``), and the
``flwr`` CLI gets its own ``FLWR_HOME`` whose only SuperLink connection is the one we started, so
it never falls back to Flower's hosted SuperGrid.
"""

from __future__ import annotations

import common.offline  # (first: before flwr and ray are imported)

import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from codec.config import CodecConfig
from fl.config import AggregationConfig, TrainConfig
from fl.flower_app import (
    PREPARED_INDEX_FILE,
    RUN_CONFIG_KEYS,
    AggregationObserver,
    ClientPlan,
    DataSource,
    FlowerAppError,
    FlowerRunError,
    ServerSettings,
    client_app,
    make_server_app,
)

#: The Flower project folder ``flwr run`` builds its app bundle from.
FLOWER_PROJECT_DIR: Final = Path(__file__).resolve().parent / "flower_project"
LOOPBACK: Final = "127.0.0.1"
SIMULATION_RESULT_FILE: Final = "flower_simulation.json"
DEPLOYMENT_RESULT_FILE: Final = "flower_deployment.json"
#: Name of the SuperLink connection written into the private FLWR_HOME.
CONNECTION_NAME: Final = "parley"
PROCESS_STOP_TIMEOUT_S: Final = 10.0
PORT_WAIT_TIMEOUT_S: Final = 60.0
FLWR_RUN_TIMEOUT_S: Final = 120.0

logger = logging.getLogger(__name__)


def small_plan(
    *, alpha: float = 0.7, seed: int = 0, data_source: DataSource = "synthetic", data_dir: str = ""
) -> ClientPlan:
    """A client plan sized for many clients on a small machine: a 16-channel, one-block codec
    (the real architecture, narrower), three steps of four 32-frame crops a round."""
    return ClientPlan(
        codec=CodecConfig(hidden=16, latent_dim=16, blocks=1),
        train=TrainConfig(steps=3, batch_size=4, crop_frames=32, seed=seed, threads=1),
        alpha=alpha,
        data_source=data_source,
        data_dir=data_dir,
        data_seed=seed,
        synthetic_utterances=3,
        synthetic_frames=96,
    )


#: Run-config overrides giving the deployment the clients of :func:`small_plan`.
SMALL_RUN_CONFIG: Final[Mapping[str, Any]] = {
    "codec-hidden": 16,
    "codec-latent-dim": 16,
    "codec-blocks": 1,
    "local-steps": 3,
    "batch-size": 4,
    "crop-frames": 32,
    "synthetic-utterances": 3,
    "synthetic-frames": 96,
}


def _check_count(name: str, value: int, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise FlowerAppError(f"{name} must be an int >= {low}, got {value!r}")


def _read_result(path: Path, *, nodes: int, rounds: int) -> dict[str, Any]:
    """The server's JSON summary, re-checked: every round, every node."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FlowerRunError(f"the ServerApp wrote no result at {path}") from error
    except (OSError, ValueError) as error:
        raise FlowerRunError(f"unreadable ServerApp result {path}: {error}") from error
    if not isinstance(data, dict):
        raise FlowerRunError(f"ServerApp result {path} is not a JSON object")
    if "error" in data:
        raise FlowerRunError(f"the ServerApp failed: {data['error']}")
    per_round = data.get("rounds")
    if not isinstance(per_round, list) or len(per_round) != rounds:
        count = len(per_round) if isinstance(per_round, list) else 0
        raise FlowerRunError(f"{count} of {rounds} rounds completed")
    for entry in per_round:
        replies = (entry.get("replies"), entry.get("evaluate_replies"))
        if any(not isinstance(count, int) or count < nodes for count in replies):
            raise FlowerRunError(
                f"round {entry.get('round')}: {replies[0]} train and {replies[1]} evaluate "
                f"replies from {nodes} clients"
            )
    return data


# --------------------------------------------------------------------------------------------
# Simulation runtime (Ray)
# --------------------------------------------------------------------------------------------


#: Set (unless already set) before Ray is imported; Ray's workers inherit them.
RAY_ENVIRONMENT: Final[Mapping[str, str]] = {
    # Despite its name this is Ray's ENABLE_RAY_CLUSTER switch (default on for Linux). Off, Ray
    # is single-machine: its node IP is the loopback address instead of the address it would
    # learn by probing a public DNS server, and the GCS, raylet, workers and runtime-env agent
    # listen on 127.0.0.1 only. (With it on, Ray turns even an explicit 127.0.0.1 node IP into
    # the machine's external address.)
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Ray warns (FutureWarning) about a coming change of default on every init unless set.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def ray_backend_config(*, num_cpus: int, client_num_cpus: float) -> dict[str, Any]:
    """Flower's ``backend_config`` for Ray: loopback only, no dashboard, quiet logs."""
    return {
        "init_args": {
            "_node_ip_address": LOOPBACK,
            "include_dashboard": False,
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "logging_level": "error",
            "log_to_driver": False,
        },
        "client_resources": {"num_cpus": client_num_cpus, "num_gpus": 0.0},
    }


def run_flower_simulation(
    *,
    nodes: int,
    rounds: int,
    alpha: float = 0.7,
    seed: int = 0,
    out_dir: Path,
    plan: ClientPlan | None = None,
    aggregation: AggregationConfig | None = None,
    observer: AggregationObserver | None = None,
    num_cpus: int = 2,
    client_num_cpus: float = 1.0,
    round_timeout_s: float = 600.0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Personalized FedAvg with ``nodes`` clients for ``rounds`` rounds on Flower + Ray.

    ``plan`` defaults to :func:`small_plan` (synthetic data); its ``alpha`` is replaced by
    ``alpha``. Returns (and writes to ``out_dir/flower_simulation.json``) per-round reply
    counts, rejections, clipping, and the clients' mean held-out L1 of the local-only, global
    and personalized models. Raises :class:`FlowerRunError` if any round lost a client.
    """
    _check_count("nodes", nodes)
    _check_count("rounds", rounds)
    base_plan = plan if plan is not None else small_plan(alpha=alpha, seed=seed)
    try:
        plan = replace(base_plan, alpha=alpha)
        aggregation = replace(aggregation or AggregationConfig(), alpha=alpha)
    except ValueError as error:
        raise FlowerAppError(f"bad alpha: {error}") from error
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / SIMULATION_RESULT_FILE
    result_path.unlink(missing_ok=True)
    settings = ServerSettings(
        plan=plan,
        aggregation=aggregation,
        rounds=rounds,
        expected_nodes=nodes,
        round_timeout_s=round_timeout_s,
        node_wait_timeout_s=60.0,
        result_path=str(result_path),
    )
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None:
        # Ray reads the switch once, at import: too late to keep this process's Ray on loopback.
        raise FlowerAppError(
            "ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; "
            "run the Flower simulation in a process that has not imported ray yet"
        )
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # ray.init() and ray.shutdown() drop /dev/null handles and Popen objects of Ray's own
            # processes (raylet, GCS, workers) while those are still exiting; Ray reaps them
            # itself. Their ResourceWarnings are about Ray, so they are collected here, ignored.
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                run_simulation(
                    server_app=make_server_app(settings, observer),
                    client_app=client_app,
                    num_supernodes=nodes,
                    backend_name="ray",
                    backend_config=ray_backend_config(
                        num_cpus=num_cpus, client_num_cpus=client_num_cpus
                    ),
                    verbose_logging=verbose,
                )
            finally:
                gc.collect()
    except FlowerAppError:
        raise
    except Exception as error:
        raise FlowerRunError(f"the Flower simulation failed: {error}") from error
    finally:
        flwr_logger.setLevel(previous_level)
    wall_s = time.monotonic() - started
    data = _read_result(result_path, nodes=nodes, rounds=rounds)
    report = {
        "engine": "flower-simulation",
        "nodes": nodes,
        "rounds": rounds,
        "alpha": alpha,
        "seed": seed,
        "architecture_id": plan.codec.architecture_id,
        "data_source": plan.data_source,
        "wall_s": wall_s,
        "server_wall_s": data["wall_s"],
        "per_round": data["rounds"],
    }
    (out_dir / SIMULATION_RESULT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def bench_flower(
    clients: int = 100, rounds: int = 5, *, out_dir: Path | None = None
) -> dict[str, Any]:
    """Wall time of a ``clients`` x ``rounds`` run on the simulation runtime (synthetic data,
    :func:`small_plan`), Ray start-up and shutdown included."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="parley-flower-bench-") as scratch:
        target = Path(out_dir) if out_dir is not None else Path(scratch)
        started = time.monotonic()
        report = run_flower_simulation(nodes=clients, rounds=rounds, out_dir=target)
        wall_s = time.monotonic() - started
    last = report["per_round"][-1]
    return {
        "flower_clients": clients,
        "flower_rounds": rounds,
        "flower_wall_s": round(wall_s, 2),
        "flower_server_wall_s": round(float(report["server_wall_s"]), 2),
        "flower_final_losses": {
            key: last[key]
            for key in ("local_only_loss", "global_loss", "personal_loss")
            if key in last
        },
    }


# --------------------------------------------------------------------------------------------
# Corpus features for the "prepared" data source
# --------------------------------------------------------------------------------------------


def prepare_corpus_features(
    out_dir: Path,
    *,
    cache_dir: Path,
    speakers: Sequence[Any] | None = None,
    train_per_speaker: int = 4,
    heldout_per_speaker: int = 2,
) -> Path:
    """Log-mel features of the synthesized corpus, one ``speaker-<i>.npz`` per speaker plus a
    ``speakers.json`` index, the layout :func:`fl.flower_app.load_prepared_client_data` reads.

    ``speakers`` are :class:`simulations.corpus.VoiceSpec` s (default: the corpus's speakers).
    """
    from media.audio import load_audio
    from media.features import log_mel
    from simulations.corpus import DEFAULT_SPEAKERS, build_corpus

    corpus = build_corpus(
        Path(cache_dir),
        speakers=tuple(speakers) if speakers is not None else DEFAULT_SPEAKERS,
        train_per_speaker=train_per_speaker,
        heldout_per_speaker=heldout_per_speaker,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, speaker in enumerate(corpus.speakers):
        arrays: dict[str, np.ndarray] = {}
        for kind, utterances in (("train", speaker.train), ("heldout", speaker.heldout)):
            for number, utterance in enumerate(utterances):
                arrays[f"{kind}-{number:03d}"] = log_mel(load_audio(utterance.wav_path))
        np.savez(out_dir / f"speaker-{index}.npz", **arrays)  # type: ignore[arg-type]
    index_data = {"speakers": [speaker.id for speaker in corpus.speakers]}
    (out_dir / PREPARED_INDEX_FILE).write_text(json.dumps(index_data), encoding="utf-8")
    return out_dir


# --------------------------------------------------------------------------------------------
# Deployment engine (SuperLink + SuperNodes + flwr run)
# --------------------------------------------------------------------------------------------


def _venv_tool(name: str) -> str:
    # The Flower commands of the environment parley runs in, not whatever is first on PATH.
    return str(Path(sys.executable).with_name(name))


def superlink_command(*, host: str, port: int) -> list[str]:
    """``flower-superlink`` serving its Fleet, Control and Runtime HTTP APIs on one port."""
    return [
        _venv_tool("flower-superlink"),
        "--insecure",
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(
    *,
    superlink: str,
    host: str,
    port: int,
    partition_id: int,
    num_partitions: int,
    data_dir: str | None = None,
) -> list[str]:
    """``flower-supernode`` for client ``partition_id``; ``port`` is its own Runtime API (each
    SuperNode on a machine needs its own)."""
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if data_dir is not None:
        node_config += f" data-dir={json.dumps(data_dir)}"
    return [
        _venv_tool("flower-supernode"),
        "--insecure",
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]


def write_flower_home(flwr_home: Path, *, superlink: str) -> Path:
    """A private ``FLWR_HOME`` whose only (and default) SuperLink connection is ``superlink``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    config = flwr_home / "config.toml"
    config.write_text(
        "[superlink]\n"
        f'default = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\n"
        f"address = {json.dumps(superlink)}\n"
        "insecure = true\n",
        encoding="utf-8",
    )
    return config


def write_run_config(path: Path, values: Mapping[str, Any]) -> Path:
    """A TOML file of ``--run-config`` overrides (keys: :data:`fl.flower_app.RUN_CONFIG_KEYS`)."""
    unknown = sorted(set(values) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise FlowerAppError(f"unknown run config keys {unknown}")
    lines = []
    for key, value in sorted(values.items()):
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float | str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            raise FlowerAppError(f"run config {key} must be a bool, number or string")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def flwr_run_command(app_dir: Path, run_config_file: Path) -> list[str]:
    return [
        _venv_tool("flwr"),
        "run",
        str(app_dir),
        CONNECTION_NAME,
        "--run-config",
        str(run_config_file),
        "--format",
        "json",
    ]


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process we start: offline, private FLWR_HOME, and this
    environment's ``bin`` first on PATH (the SuperLink and SuperNodes start ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name)."""
    environment = dict(os.environ)
    environment.update(common.offline.OFFLINE_ENVIRONMENT)
    environment["FLWR_HOME"] = str(flwr_home)
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = os.pathsep.join([bin_dir, environment.get("PATH", "")])
    return environment


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(
    host: str, port: int, *, process: subprocess.Popen[bytes], name: str, timeout_s: float
) -> None:
    """Until ``host:port`` accepts a TCP connection; :class:`FlowerRunError` if ``process``
    exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise FlowerRunError(f"{name} exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise FlowerRunError(
                    f"nothing listens on {host}:{port} after {timeout_s:.0f} s"
                ) from None
            time.sleep(0.2)


def descendant_pids(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; empty where there is no /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the ppid follows the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def stop_process(
    process: subprocess.Popen[bytes], timeout_s: float = PROCESS_STOP_TIMEOUT_S
) -> None:
    """Stop a process we started, and the helpers it started, by PID: SIGTERM, then SIGKILL.

    The SuperLink and SuperNodes stop their ``flower-superexec`` on SIGTERM, and a superexec
    also exits when its parent dies; the descendants are signalled here too in case either
    does not happen in time.
    """
    if process.poll() is not None:
        return
    descendants = descendant_pids(process.pid)
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)
    for pid in descendants:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue


@dataclass(frozen=True, slots=True)
class _Started:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def _start(name: str, command: list[str], log_dir: Path, environment: dict[str, str]) -> _Started:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=log_dir
        )
    return _Started(name, process, log_path)


def _log_tail(started: _Started, lines: int = 5) -> str:
    try:
        text = started.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def run_flower_deployment(
    *,
    nodes: int,
    rounds: int,
    alpha: float = 0.7,
    seed: int = 0,
    out_dir: Path,
    run_config: Mapping[str, Any] | None = None,
    timeout_s: float = 300.0,
    app_dir: Path = FLOWER_PROJECT_DIR,
) -> dict[str, Any]:
    """The app on Flower's deployment engine, all on 127.0.0.1: a SuperLink, ``nodes``
    SuperNodes and ``flwr run``. Every process is stopped by PID before this returns, whatever
    happened. ``run_config`` overrides the ``[tool.flwr.app.config]`` of the Flower project in
    ``app_dir``.
    """
    _check_count("nodes", nodes)
    _check_count("rounds", rounds)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / DEPLOYMENT_RESULT_FILE
    result_path.unlink(missing_ok=True)
    flwr_home = out_dir / "flwr-home"
    environment = flower_environment(flwr_home)
    superlink_port, *node_ports = free_loopback_ports(nodes + 1)
    superlink_address = f"{LOOPBACK}:{superlink_port}"
    write_flower_home(flwr_home, superlink=superlink_address)
    values: dict[str, Any] = {
        "num-server-rounds": rounds,
        "num-supernodes": nodes,
        "alpha": alpha,
        "seed": seed,
        "result-path": str(result_path),
        **(run_config or {}),
    }
    run_config_file = write_run_config(out_dir / "run-config.toml", values)
    # Validate before starting anything: a bad value fails here, not in a ServerApp log.
    ServerSettings.from_run_config(values)

    started: list[_Started] = []
    began = time.monotonic()
    try:
        superlink = _start(
            "superlink", superlink_command(host=LOOPBACK, port=superlink_port), out_dir, environment
        )
        started.append(superlink)
        wait_for_port(
            LOOPBACK,
            superlink_port,
            process=superlink.process,
            name="flower-superlink",
            timeout_s=PORT_WAIT_TIMEOUT_S,
        )
        for partition_id, port in enumerate(node_ports):
            started.append(
                _start(
                    f"supernode-{partition_id}",
                    supernode_command(
                        superlink=superlink_address,
                        host=LOOPBACK,
                        port=port,
                        partition_id=partition_id,
                        num_partitions=nodes,
                    ),
                    out_dir,
                    environment,
                )
            )
        submitted = subprocess.run(
            flwr_run_command(Path(app_dir), run_config_file),
            capture_output=True,
            env=environment,
            cwd=out_dir,
            timeout=FLWR_RUN_TIMEOUT_S,
            check=False,
        )
        if submitted.returncode != 0:
            detail = (submitted.stderr or submitted.stdout).decode(errors="replace").strip()
            raise FlowerRunError(f"flwr run failed: {detail.splitlines()[-1:] or detail}")
        run_id = _run_id(submitted.stdout)
        deadline = time.monotonic() + timeout_s
        while not result_path.exists():
            for item in started:
                if item.process.poll() is not None:
                    raise FlowerRunError(
                        f"{item.name} exited with {item.process.returncode}: {_log_tail(item)}"
                    )
            if time.monotonic() >= deadline:
                raise FlowerRunError(
                    f"run {run_id} wrote no result within {timeout_s:.0f} s: {_log_tail(superlink)}"
                )
            time.sleep(0.5)
        data = _read_result(result_path, nodes=nodes, rounds=rounds)
    finally:
        for item in reversed(started):
            stop_process(item.process)
    report = {
        "engine": "flower-deployment",
        "nodes": nodes,
        "rounds": rounds,
        "alpha": alpha,
        "seed": seed,
        "run_id": run_id,
        "superlink": superlink_address,
        "wall_s": time.monotonic() - began,
        "server_wall_s": data["wall_s"],
        "per_round": data["rounds"],
    }
    result_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _run_id(stdout: bytes) -> str:
    # `flwr run --format json` prints one JSON object; its "run-id" names the run.
    text = stdout.decode(errors="replace")
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error-message"), str):
        reason = " ".join(data["error-message"].split())
        raise FlowerRunError(f"flwr run failed: {reason}")
    if not isinstance(data, dict) or not data.get("success") or not data.get("run-id"):
        raise FlowerRunError(f"flwr run did not start a run: {text.strip()[-200:]}")
    return str(data["run-id"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.flower_sim [bench|simulate|deploy]``: print JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m simulations.flower_sim")
    parser.add_argument("mode", choices=("bench", "simulate", "deploy"))
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("build/flower"))
    args = parser.parse_args(argv)
    try:
        if args.mode == "bench":
            result = bench_flower(args.nodes, args.rounds)
        elif args.mode == "simulate":
            result = run_flower_simulation(
                nodes=args.nodes,
                rounds=args.rounds,
                alpha=args.alpha,
                seed=args.seed,
                out_dir=args.out,
            )
        else:
            result = run_flower_deployment(
                nodes=args.nodes,
                rounds=args.rounds,
                alpha=args.alpha,
                seed=args.seed,
                out_dir=args.out,
            )
    except FlowerAppError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
