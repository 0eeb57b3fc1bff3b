"""``parley bench fl``: federated rounds at scale, on Flower's engine and on real nodes, one run.

* Flower: 100 clients x 5 rounds on the simulation runtime (Ray on 127.0.0.1), synthetic
  client features (:func:`simulations.flower_sim.bench_flower`), start-up included.
* Real nodes: 16 daemons x 3 rounds over loopback with real handshakes, one synthetic speaker
  each (:mod:`simulations.node_sim`), Whisper scoring left out: this measures the federation.

``per_round_bytes`` is the mean number of bytes the real nodes sent per round, all nodes
together (handshakes and bundles both ways).
"""

from __future__ import annotations

import common.offline  # noqa: F401

import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.flower_sim import bench_flower
from simulations.node_sim import SimulationSettings, main_sync
from simulations.report import print_report, write_report


def run(
    json_path: Path | None,
    *,
    flower_clients: int = 100,
    flower_rounds: int = 5,
    real_nodes: int = 16,
    real_rounds: int = 3,
    local_steps: int = 20,
) -> dict[str, Any]:
    flower = bench_flower(clients=flower_clients, rounds=flower_rounds)
    with tempfile.TemporaryDirectory(prefix="parley-bench-fl-") as scratch:
        started = time.monotonic()
        report = main_sync(
            SimulationSettings(
                nodes=real_nodes, rounds=real_rounds, local_steps=local_steps, measure_wer=False
            ),
            out_dir=Path(scratch),
            cache_dir=None,
            progress=None,
        )
        real_wall_s = time.monotonic() - started
    rounds = report["rounds"]
    result = {
        "fl": {
            "flower_clients": flower["flower_clients"],
            "flower_rounds": flower["flower_rounds"],
            "flower_wall_s": flower["flower_wall_s"],
            "real_nodes": real_nodes,
            "real_rounds": real_rounds,
            "real_wall_s": round(real_wall_s, 2),
            "real_round_wall_s": [round(row["wall_s"], 2) for row in rounds],
            "per_round_bytes": round(sum(row["bytes_exchanged"] for row in rounds) / len(rounds)),
            "per_round_handshakes": round(sum(row["handshakes"] for row in rounds) / len(rounds)),
            "note": "wall times include start-up (Ray for Flower; corpus loading and node "
            "start for real nodes); real-node rounds include local training",
        }
    }
    write_report(json_path, result)
    return result


if __name__ == "__main__":
    print_report(run(None))
