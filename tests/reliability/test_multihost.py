"""Three nodes on three "hosts" (network namespaces joined by veth links through a bridge):
real mDNS discovery on those links, handshakes and an FL round.

Budget: 3 node processes, discovery within 60 s, one round (about 20 s). Needs root and
iproute2; skipped with the reason otherwise. Nothing in this (pytest) process connects to the
namespaces' private addresses: the nodes and the ``parley round`` client run inside them, and
status is read over each node's Unix socket.
"""

from __future__ import annotations

import pytest

from simulations.node_helpers import short_root
from simulations.reliability.process_nodes import NamespaceUnavailable, Star, run_multihost

pytestmark = pytest.mark.slow


def test_three_nodes_in_namespaces_discover_each_other_and_run_a_round() -> None:
    with short_root() as root:
        try:
            report = run_multihost(root, nodes=3)
        except NamespaceUnavailable as error:
            pytest.skip(f"network namespaces unavailable: {error}")
    shown = report.as_dict()
    assert report.discovered, shown
    assert report.ok, shown
    assert report.round["record"]["participants"], shown


def test_namespaces_are_removed_afterwards() -> None:
    import subprocess

    star = Star(1)
    try:
        star.create()
    except NamespaceUnavailable as error:
        star.destroy()
        pytest.skip(f"network namespaces unavailable: {error}")
    star.destroy()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert star.suffix not in listed
