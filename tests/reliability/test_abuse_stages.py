"""The bench's issue-#11 stages at CI size (each also has narrower tests beside this file).

Budget: three loopback nodes (one a process under ``ulimit -n 200``), under a minute or so.
"""

from __future__ import annotations

import pytest

from simulations.node_helpers import short_root
from simulations.reliability.abuse_stages import fd_pressure, multi_address_flood, slow_reader

pytestmark = pytest.mark.slow


def test_fd_pressure_status_and_a_trusted_peer_still_get_through():
    with short_root() as root:
        figures = fd_pressure(root, nofile=200, strangers=120)
    assert figures["status_ok"] is True, figures
    assert figures["honest_handshake_ok"] is True, figures
    assert figures["node_alive"] is True, figures


def test_multi_address_flood_is_held_to_the_prefix_budgets():
    with short_root() as root:
        figures = multi_address_flood(root, addresses=300, rounds=2)
    assert figures["honest_ok"] is True, figures
    assert figures["allowed_fraction"] is not None and figures["allowed_fraction"] < 0.8, figures


def test_slow_reader_is_cut_off_and_the_node_keeps_serving():
    with short_root() as root:
        figures = slow_reader(root, send_timeout_s=1.0, limit_s=30)
    assert figures["node_ok"] is True, figures
    assert figures["send_timeouts"] == 1, figures
