from __future__ import annotations

import json

from simulations.bench_node import run


def test_bench_node_reports_every_figure(tmp_path):
    path = tmp_path / "node.json"
    result = run(path, rounds=2)
    assert json.loads(path.read_text()) == result
    figures = result["node"]
    assert 0 < figures["start_two_nodes_s"] <= figures["start_to_discovery_s"]
    assert figures["handshake_p50_s"] > 0
    assert len(figures["round_s"]) == 2 and figures["round_p50_s"] > 0
