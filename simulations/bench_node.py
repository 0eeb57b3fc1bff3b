"""``parley bench node``: how fast a node starts, finds a peer, handshakes and runs a round.

Two real nodes on loopback with mDNS bound to 127.0.0.1, trusting each other; ``rounds``
rounds are run by the first node. Times are wall-clock on this machine.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import shutil
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from daemon.config import Config
from daemon.node import NodeOptions, open_node
from simulations.node_sim import _make_homes
from simulations.report import print_report, write_report


async def _measure(rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pbn"))  # short: AF_UNIX path limit
    try:
        homes = _make_homes(root, 2)
        async with AsyncExitStack() as stack:
            started = time.monotonic()
            nodes = []
            for index, (home, _) in enumerate(homes):
                config = (
                    Config()
                    .replace("node", name=f"bench{index}", log_level="warning")
                    .replace("listen", host="127.0.0.1")
                    .replace("discovery", mdns=True, interfaces=("127.0.0.1",))
                    .replace("fl", round_interval_min=0)
                )
                node = await stack.enter_async_context(
                    open_node(home, config, NodeOptions(listen_port=0))
                )
                nodes.append(node)
            up = time.monotonic()
            with trio.fail_after(60):
                while not all(node.peers.present() for node in nodes):
                    await trio.sleep(0.01)
            discovered = time.monotonic()
            for node in nodes:
                for other in nodes:
                    if other is not node:
                        node.peers.trust(other.identity.public_key.hex())
            round_times = []
            for _ in range(rounds):
                before = time.monotonic()
                await nodes[0].scheduler.run_round()
                round_times.append(time.monotonic() - before)
            handshakes = sorted(nodes[0].connections.stats.handshake_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "node": {
            "start_two_nodes_s": round(up - started, 3),
            "start_to_discovery_s": round(discovered - started, 3),
            "handshake_p50_s": round(statistics.median(handshakes), 4),
            "round_s": [round(value, 3) for value in round_times],
            "round_p50_s": round(statistics.median(round_times), 3),
        }
    }


def run(json_path: Path | None, *, rounds: int = 5) -> dict[str, Any]:
    result = trio.run(_measure, rounds)
    write_report(json_path, result)
    return result


if __name__ == "__main__":
    print_report(run(None))
