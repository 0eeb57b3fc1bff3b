"""``parley bench reliability``: the heavy versions of the reliability suite (tests/reliability).

Each figure comes from a real run, here and now:

* ``fuzz``: 100,000 inputs per network-facing decoder (mutations of valid messages, structured
  bundle mutations, random bytes), counting any exception other than parley's
  ``RemoteProtocolError``; Python heap growth via tracemalloc per decoder, and the RSS of a
  real node process before and after a few thousand hostile connections.
* ``hostile``: every scripted attack against one node (a 5 s flood of 1,000 message-1
  connections a second, 16 half-open handshakes, ...): rejections counted by the node, and
  whether an honest peer still got through within 1 s after each.
* ``crash``: 100 ``kill -9`` of a node process mid-round or mid-caption-job, each restart
  checked (identity, checkpoint, completed rounds, jobs).
* ``load``: 64 concurrent handshakes, 5 waves, with 8 concurrent calls of 29 s of speech
  (en -> pt, real time) and 3 caption jobs on the node.
* ``multihost``: 3 nodes in network namespaces, mDNS + a round (needs root).
* ``stranger_calls``: strangers try to place calls on a node with the default config and on one
  with ``calls_from = "known"``; ``accepted`` must be 0.
* ``locked_db``: ``node.db`` write-locked by another process for 8 s while a trusted peer and a
  stranger handshake; ``node_survived``.
* ``disk_full``: an FL round whose checkpoint write fails with ENOSPC (a stand-in writer: the
  disk is not really filled); ``node_survived``, ``state_loadable`` (no round left running).
* issue #11's ``trust_by_name``, ``multi_address_flood``, ``fd_pressure``, ``slow_reader`` and
  ``poison_rounds`` (:mod:`simulations.reliability.abuse_stages`), the same with ``quick``.

The scenarios live in :mod:`simulations.reliability`; the tests in ``tests/reliability`` run the
same code with small budgets. ``quick=True`` uses the CI budgets.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before anything imports a dependency that phones home)

import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio


@dataclass(frozen=True, kw_only=True, slots=True)
class Budget:
    fuzz_inputs: int
    node_fuzz_connections: int
    flood_seconds: float
    slowloris: int
    crash_trials: int
    load_waves: int
    caption_jobs: int
    calls: int


FULL: Final = Budget(
    fuzz_inputs=100_000,
    node_fuzz_connections=5_000,
    flood_seconds=5.0,
    slowloris=16,
    crash_trials=100,
    load_waves=5,
    caption_jobs=3,
    calls=8,
)
#: The CI budgets (tests/reliability), for a quick look.
QUICK: Final = Budget(
    fuzz_inputs=2_000,
    node_fuzz_connections=300,
    flood_seconds=2.0,
    slowloris=4,
    crash_trials=5,
    load_waves=1,
    caption_jobs=1,
    calls=8,
)


def _fuzz_one(name: str, count: int) -> tuple[str, dict[str, object]]:
    from simulations.reliability.fuzz_targets import fuzz_loop, targets

    target = next(item for item in targets() if item.name == name)
    return name, fuzz_loop(target, count, seed=zlib.crc32(name.encode())).as_dict()


def _fuzz_decoders(count: int) -> dict[str, dict[str, object]]:
    from simulations.reliability.fuzz_targets import targets

    names = [target.name for target in targets()]
    workers = max(1, min(len(names), os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        results = pool.starmap(_fuzz_one, [(name, count) for name in names])
    report: dict[str, dict[str, object]] = {}
    for name, figures in results:
        report[name] = {
            "inputs": figures["inputs"],
            "unexpected_exceptions": figures["unexpected_exceptions"],
            "first_unexpected": figures["first_unexpected"],
            "seconds": round(float(figures["seconds"]), 1),  # type: ignore[arg-type]
            "heap_kib_growth": round(
                float(figures["traced_kib_after"]) - float(figures["traced_kib_before"]),  # type: ignore[arg-type]
                1,
            ),
        }
    return report


async def _spray(port: int, node_key: bytes, count: int) -> int:
    """Hostile connections from many loopback sources: mutated message 1s and random bytes."""
    from simulations.reliability import hostile_peer
    from simulations.reliability.fuzz_targets import mutate

    rng = random.Random(7)
    seeds = [hostile_peer.message1(node_key)[2:]]
    sent = 0
    limiter = trio.CapacityLimiter(32)

    async def one(index: int) -> None:
        nonlocal sent
        async with limiter:
            body = mutate(rng, seeds)[:65535] or b"\x00"
            framed = len(body).to_bytes(2, "big") + body if index % 3 else body
            try:
                stream = await hostile_peer.open_tcp(
                    "127.0.0.1", port, source=f"127.1.{index // 250 % 250}.{index % 250 + 1}"
                )
            except OSError:
                return
            try:
                await stream.send_all(framed)
                await hostile_peer.read_until_closed(stream, limit_s=2)
                sent += 1
            except (trio.BrokenResourceError, OSError):
                sent += 1
            finally:
                await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)
    return sent


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _node_under_fuzz(root: Path, connections: int) -> dict[str, object]:
    from simulations.node_helpers import make_home
    from simulations.reliability.process_nodes import NodeProcess, free_port, write_config

    home, identity = make_home(root, "fuzzed")
    port = free_port()
    write_config(home, port=port, extra="[session]\nhandshake_timeout_s = 2.0\n")
    node = NodeProcess(home, port)
    node.start()
    try:
        assert node.process is not None
        pid = node.process.pid
        warm = trio.run(_spray, port, identity.public_key, max(50, connections // 10))
        before = _rss_mb(pid)
        sent = trio.run(_spray, port, identity.public_key, connections)
        time.sleep(1.0)
        after = _rss_mb(pid)
        status = node.rpc("status")
        alive = node.process.poll() is None
    finally:
        node.stop()
    return {
        "connections": warm + sent,
        "rss_mb_before": round(before, 1),
        "rss_mb_after": round(after, 1),
        "node_alive": alive,
        "rejected": status["connections"]["rejected"],
    }


def _hostile(root: Path, budget: Budget) -> dict[str, object]:
    from simulations.reliability.scenarios import run_hostile_cases

    results, counted = trio.run(
        lambda: run_hostile_cases(
            root, flood_seconds=budget.flood_seconds, slowloris=budget.slowloris
        )
    )
    report: dict[str, object] = {name: result.as_dict() for name, result in results.items()}
    try:
        from simulations.reliability.call_scenarios import case_call_flood

        (root / "call").mkdir()
        flood = trio.run(lambda: case_call_flood(root / "call", seconds_of_audio=600))
        report["call_codec_frames_flood"] = flood.as_dict()
    except ImportError as error:  # the call pipeline is optional in a partial checkout
        report["call_codec_frames_flood"] = {"skipped": str(error)}
    except Exception as error:
        report["call_codec_frames_flood"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    report["_node_rejected_counts"] = dict(counted)
    return report


def _speech(root: Path) -> Path | None:
    if shutil.which("espeak-ng") is None:
        return None
    wav = root / "speech.wav"
    text = "Reliability benchmark speech. The node captions this while it is under load."
    subprocess.run(["espeak-ng", "-v", "en-gb", "-s", "130", "-w", str(wav), text], check=True)
    return wav


def _multihost(root: Path) -> dict[str, object]:
    from simulations.reliability.process_nodes import NamespaceUnavailable, run_multihost

    try:
        return run_multihost(root).as_dict()
    except NamespaceUnavailable as error:
        return {"ok": None, "skipped": str(error)}


def _stranger_calls(root: Path, *, quick: bool) -> dict[str, object]:
    from simulations.reliability.fault_scenarios import case_stranger_calls

    root.mkdir(exist_ok=True)
    return trio.run(lambda: case_stranger_calls(root, strangers=5 if quick else 20))


def _locked_db(root: Path) -> dict[str, object]:
    from simulations.reliability.fault_scenarios import case_locked_db

    root.mkdir(exist_ok=True)
    return trio.run(lambda: case_locked_db(root, hold_s=8.0))


def _disk_full(root: Path) -> dict[str, object]:
    from simulations.reliability.fault_scenarios import case_disk_full_with_stand_in_writer

    root.mkdir(exist_ok=True)
    figures = trio.run(case_disk_full_with_stand_in_writer, root)
    return {**figures, "stand_in": "checkpoint writer raising OSError(ENOSPC)"}


def run(json_path: Path | None, *, quick: bool = False) -> dict[str, Any]:
    """Run the reliability benchmark (several minutes; ``quick``: about 3 minutes)."""
    budget = QUICK if quick else FULL
    started = time.monotonic()
    result: dict[str, Any] = {"budget": asdict(budget), "host": socket.gethostname()}
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="prb"))
    try:
        speech = _speech(root)
        from simulations.bench_call import (
            SCRIPT_SENTENCES,
            script_audio,
            trained_caller_checkpoint,
        )
        from simulations.reliability.abuse_stages import stages as abuse_stages
        from simulations.reliability.process_nodes import CallLoad, run_crash_trials, run_load

        calls = CallLoad(
            calls=budget.calls,
            audio=script_audio(SCRIPT_SENTENCES),
            script=" ".join(SCRIPT_SENTENCES),
            checkpoint=trained_caller_checkpoint(),
        )

        for folder in ("c", "l", "m"):
            (root / folder).mkdir()
        stages: list[tuple[str, Callable[[], object]]] = [
            ("fuzz", lambda: _fuzz_decoders(budget.fuzz_inputs)),
            ("fuzz_node", lambda: _node_under_fuzz(root / "f", budget.node_fuzz_connections)),
            ("hostile", lambda: _hostile(root / "h", budget)),
            (
                "crash",
                lambda: run_crash_trials(
                    root / "c", trials=budget.crash_trials, speech_wav=speech, seed=11
                ).as_dict(),
            ),
            (
                "load",
                lambda: run_load(
                    root / "l",
                    peers=64,
                    waves=budget.load_waves,
                    speech_wav=speech,
                    caption_jobs=budget.caption_jobs,
                    calls=calls,
                ).as_dict(),
            ),
            ("multihost", lambda: _multihost(root / "m")),
            ("stranger_calls", lambda: _stranger_calls(root / "s", quick=quick)),
            ("locked_db", lambda: _locked_db(root / "k")),
            ("disk_full", lambda: _disk_full(root / "d")),
            *abuse_stages(root / "abuse", quick=quick),
        ]
        for name, stage in stages:
            # One stage failing is a finding to report, not a reason to lose the others.
            try:
                result[name] = stage()
            except Exception as error:
                result[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - started, 1)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    import sys

    arguments = sys.argv[1:]
    quick_run = "--quick" in arguments
    paths = [argument for argument in arguments if argument != "--quick"]
    figures = run(Path(paths[0]) if paths else None, quick=quick_run)
    print(json.dumps(figures, indent=2, default=str))
