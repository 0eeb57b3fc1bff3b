"""One error never ends the node (issue 11, item 2): a database locked by another process and
a full disk during an FL round each end one unit, are counted, and leave state consistent.

Budget: the locked-database case holds the lock for 8 s (the issue's figure, over SQLite's 5 s
busy timeout); the full-disk case runs two rounds of a node without peers (seconds).
"""

from __future__ import annotations

from simulations.node_helpers import short_root
from simulations.reliability.fault_scenarios import (
    case_disk_full_with_stand_in_writer,
    case_locked_db,
    case_stranger_calls,
)


async def test_a_database_locked_by_another_process_during_handshakes_ends_no_node():
    with short_root() as root:
        result = await case_locked_db(root, hold_s=8.0)
    assert result["node_survived"], result
    # The handshakes' database work ran off the event loop: the node answered meanwhile.
    assert result["status_while_locked"], result
    faults = result["faults"]
    assert faults["by_type"].get("DatabaseBusyError", 0) >= 1, result


async def test_a_full_disk_during_a_round_fails_that_round_with_stand_in_enospc_writer():
    with short_root() as root:
        result = await case_disk_full_with_stand_in_writer(root)
    assert result["round_status"] == "failed", result
    assert str(result["reason"]).startswith("disk full:"), result
    assert "running" not in result["rounds_listed"], result
    assert result["node_survived"] and result["state_loadable"], result
    assert result["next_round_status"] == "completed", result


async def test_no_stranger_gets_a_call_accepted():
    with short_root() as root:
        result = await case_stranger_calls(root, strangers=2)
    assert result["accepted"] == 0, result
    assert result["refused_at_handshake"] == 2 and result["refused_at_call_start"] == 2, result
    assert result["honest_ok"], result


async def test_parley_status_shows_faults_by_type_and_the_disk_used():
    from rich.console import Console

    from daemon.node import NodeOptions, open_node
    from daemon.rpc_client import call
    from daemon.status_view import render_status
    from simulations.node_helpers import loopback_config, make_home

    with short_root() as root:
        home, _ = make_home(root, "node")
        config = loopback_config(name="node", mdns=False)
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            node.faults.record("connection", PermissionError("denied"))
            node.faults.record("connection", PermissionError("denied"))
            status = await call(home.socket_path, "status")
    assert status["faults"]["by_type"] == {"PermissionError": 2}
    assert status["storage"]["max_bytes"] == config.storage.max_bytes
    console = Console(record=True, width=200)
    render_status(console, {"status": status})
    text = console.export_text()
    assert "faults" in text and "2: PermissionError=2" in text
    assert "calls+captions disk" in text and "0 B in 0 folders" in text
