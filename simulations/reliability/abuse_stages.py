"""Issue #11's stages for ``parley bench reliability``: trust by name, a flood from many
addresses, descriptor pressure, a reader that stops reading, forty poisoned rounds.

Each stage is a function returning its figures (the keys the issue names first); the CI-sized
versions of the same behaviour are the tests beside this file. Traffic goes to 127.0.0.1 only,
from 127.x source addresses; every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from simulations.node_helpers import make_home

HONEST_DEADLINE_S = 10.0


# --- trust_by_name ----------------------------------------------------------------------------


def trust_by_name(root: Path, *, flood: int = 10_001) -> dict[str, object]:
    """ "alice" is seen, ``flood`` fresh keys arrive (past the 10,000 bound on merely-known
    peers), mallory announces "alice", and the user runs ``parley peers trust alice``."""
    from daemon.database import PeerSource, PeerStore, TrustState, open_database
    from daemon.peers import KeyChangedError, PeerTable, fingerprint

    home, _ = make_home(root, "victim")
    alice, mallory = bytes(range(32)), bytes(range(50, 82))
    with open_database(home.database_path) as database:
        table = PeerTable(PeerStore(database), ttl=60.0)
        table.observe(alice, name="alice", address=("127.0.0.2", 7400), source=PeerSource.MDNS)
        now = time.time()
        with database.transaction() as connection:  # all but the last few in one go
            connection.executemany(
                "INSERT INTO peers (public_key, addresses, source, first_seen, last_seen, trust)"
                " VALUES (?, '[]', 'inbound', ?, ?, 'known')",
                [(i.to_bytes(4, "big") * 8, now + i, now + i) for i in range(flood - 10)],
            )
        for index in range(flood - 10, flood):  # the real path, which prunes
            table.record_handshake(
                index.to_bytes(4, "big") * 8, address=None, source=PeerSource.INBOUND
            )
        try:
            table.observe(
                mallory, name="alice", address=("127.0.0.66", 7400), source=PeerSource.MDNS
            )
            attacker_owns_name = True
        except KeyChangedError:
            attacker_owns_name = False
        pin_kept = table.get(alice) is not None
        key_change_shown = bool(table.pending_key_changes())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args, "--home", str(home.root)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    plain = cli("peers", "trust", "alice")
    wrong = cli("peers", "trust", "alice", "--fingerprint", fingerprint(mallory))
    listed = cli("peers", "list")
    with open_database(home.database_path) as database:
        record = PeerStore(database).get(mallory)
    return {
        "attacker_trusted": record is not None and record.trust is TrustState.TRUSTED,
        "flood_keys": flood,
        "alice_pin_kept": pin_kept,
        "attacker_owns_name": attacker_owns_name,
        "trust_by_name_without_fingerprint_refused": plain.returncode == 2,
        "trust_with_wrong_fingerprint_refused": wrong.returncode == 2,
        "key_change_shown": key_change_shown and "CHANGED" in listed.stdout,
    }


# --- multi_address_flood ----------------------------------------------------------------------


def _flood_source(index: int) -> str:
    """Addresses 127.20.0.1 upwards, 250 per /24 (so 4,097 addresses span 17 /24s)."""
    return f"127.{20 + index // 62_500}.{index // 250 % 250}.{index % 250 + 1}"


async def _multi_address_flood(root: Path, addresses: int, rounds: int) -> dict[str, object]:
    from simulations.reliability import hostile_peer
    from simulations.reliability.scenarios import honest_handshake, hostile_target_node

    async with hostile_target_node(root, "flooded") as node:
        stats = node.connections.stats
        before = dict(stats.rejected)
        attempts = 0
        slots = trio.CapacityLimiter(64)

        async def attempt(index: int) -> None:
            nonlocal attempts
            async with slots:
                try:
                    stream = await hostile_peer.open_tcp(
                        "127.0.0.1", node.listen_port, source=_flood_source(index)
                    )
                except OSError:
                    return
                attempts += 1
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await stream.send_all(hostile_peer.message1(node.identity.public_key))
                await trio.aclose_forcefully(stream)

        started = trio.current_time()
        with trio.move_on_after(600):
            for _ in range(rounds):
                async with trio.open_nursery() as nursery:
                    for index in range(addresses):
                        nursery.start_soon(attempt, index)
        seconds = trio.current_time() - started
        # Every attempt ends counted (refused at the door, or its handshake failed): wait for
        # the node to work through its backlog before reading the figures.
        with trio.move_on_after(120):
            while sum(stats.rejected.values()) - sum(before.values()) < attempts:
                await trio.sleep(0.1)
        honest = await honest_handshake(node)
        delta = {
            key: value - before.get(key, 0)
            for key, value in stats.rejected.items()
            if value - before.get(key, 0)
        }
    limited = delta.get("rate_limited", 0)
    return {
        "allowed_fraction": round((attempts - limited) / attempts, 4) if attempts else None,
        "honest_ok": honest,
        "attempts": attempts,
        "addresses": addresses,
        "prefixes": len({_flood_source(i).rsplit(".", 1)[0] for i in range(addresses)}),
        "seconds": round(seconds, 1),
        "rejected": delta,
    }


def multi_address_flood(root: Path, *, addresses: int, rounds: int) -> dict[str, object]:
    return trio.run(_multi_address_flood, root, addresses, rounds)


# --- fd_pressure ------------------------------------------------------------------------------


async def _hold_stranger_sessions(
    port: int, node_key: bytes, count: int, hold: trio.Event, opened: list[int]
) -> None:
    from handshake.noise import StaticIdentity
    from handshake.stream import initiate_session
    from simulations.reliability.hostile_peer import hostile_hello, open_tcp

    slots = trio.CapacityLimiter(8)

    async def one(index: int) -> None:
        async with slots:
            try:
                with trio.fail_after(20):
                    stream = await open_tcp(
                        "127.0.0.1", port, source=f"127.40.{index // 20}.{index % 20 + 1}"
                    )
                    session = await initiate_session(
                        stream,
                        identity=StaticIdentity.generate(),
                        responder_static_public=node_key,
                        our_hello=hostile_hello(),
                        our_bundle=None,
                    )
            except (trio.TooSlowError, trio.BrokenResourceError, OSError):
                return
            opened[0] += 1
        try:
            await hold.wait()
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(session)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)


def fd_pressure(root: Path, *, nofile: int = 200, strangers: int = 183) -> dict[str, object]:
    """A node under ``ulimit -n nofile`` while ``strangers`` sessions are held open: does
    ``parley status`` answer, and does a trusted peer still get a session?"""
    from handshake.noise import StaticIdentity
    from handshake.stream import initiate_session
    from schemas.messages import Ping
    from simulations.reliability.hostile_peer import hostile_hello, open_tcp
    from simulations.reliability.process_nodes import (
        NodeProcess,
        free_port,
        trust_keys_on_disk,
        write_config,
    )

    home, identity = make_home(root, "pressed")
    port = free_port()
    write_config(home, port=port)
    honest = StaticIdentity.generate()
    trust_keys_on_disk(home, [honest.public])
    node = NodeProcess(
        home, port, prefix=("sh", "-c", f'ulimit -n {nofile} && exec "$@"', "parley-node")
    )
    node.start()
    figures: dict[str, Any] = {"nofile": nofile, "strangers": strangers}
    try:

        async def main() -> None:
            hold = trio.Event()
            opened = [0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    _hold_stranger_sessions, port, identity.public_key, strangers, hold, opened
                )
                with trio.move_on_after(120):
                    while opened[0] < strangers:
                        before = opened[0]
                        await trio.sleep(2.0)
                        if opened[0] == before:
                            break  # the node stopped taking more: its cap
                figures["stranger_handshakes_completed"] = opened[0]
                started = time.monotonic()
                try:
                    status = await trio.to_thread.run_sync(lambda: node.rpc("status", timeout=10))
                    figures["status_ok"] = True
                    figures["status_s"] = round(time.monotonic() - started, 2)
                    figures["sessions_at_node"] = status["counts"]["sessions"]
                except Exception as error:  # the finding is that it failed, and why
                    figures["status_ok"] = False
                    figures["status_error"] = f"{type(error).__name__}: {error}"[:300]
                try:
                    with trio.fail_after(HONEST_DEADLINE_S):
                        stream = await open_tcp("127.0.0.1", port)
                        session = await initiate_session(
                            stream,
                            identity=honest,
                            responder_static_public=identity.public_key,
                            our_hello=hostile_hello(),
                            our_bundle=None,
                        )
                        async with session:
                            await session.send_message(Ping(nonce=1))
                            await session.receive_message()
                    figures["honest_handshake_ok"] = True
                except (trio.TooSlowError, trio.BrokenResourceError, OSError) as error:
                    figures["honest_handshake_ok"] = False
                    figures["honest_error"] = f"{type(error).__name__}: {error}"[:300]
                hold.set()

        trio.run(main)
        figures["node_alive"] = node.process is not None and node.process.poll() is None
        with contextlib.suppress(Exception):
            figures["rejected"] = node.rpc("status")["connections"]["rejected"]
    finally:
        node.stop()
    return {
        key: figures.get(key)
        for key in ("status_ok", "honest_handshake_ok", *sorted(figures))
        if key in figures
    }


# --- slow_reader ------------------------------------------------------------------------------


async def _slow_reader(root: Path, send_timeout_s: float, limit_s: float) -> dict[str, object]:
    import socket

    from daemon.config import Config
    from daemon.node import NodeOptions, open_node
    from handshake.noise import StaticIdentity
    from handshake.stream import initiate_session
    from schemas.messages import Ping
    from simulations.reliability.scenarios import honest_handshake

    home, _ = make_home(root, "written")
    config = Config().replace("node", name="written", log_level="warning")
    config = config.replace("listen", host="127.0.0.1")
    config = config.replace("discovery", mdns=False, interfaces=("127.0.0.1",))
    config = config.replace("session", send_timeout_s=send_timeout_s)
    # The slow reader is a stranger: a node that admits strangers' sessions (the default refuses
    # them at the handshake) must still not let one pin a handler.
    config = config.replace("trust", calls_from="anyone")
    async with open_node(home, config, NodeOptions(listen_port=0)) as node:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read it
        await sock.bind(("127.0.0.50", 0))
        await sock.connect(("127.0.0.1", node.listen_port))
        session = await initiate_session(
            trio.SocketStream(sock),
            identity=StaticIdentity.generate(),
            responder_static_public=node.identity.public_key,
            our_hello=node.hello(),
            our_bundle=None,
        )
        started = trio.current_time()
        sent = 0
        closed_by_node = False
        with trio.move_on_after(limit_s):
            while True:  # bounded by the deadline above
                try:
                    # Pings without reading the Pongs: the node's writes pile up unread.
                    await session.send_messages([Ping(nonce=sent + i) for i in range(200)])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    closed_by_node = True
                    break
                sent += 200
                if node.connections.stats.rejected.get("send_timeout", 0):
                    closed_by_node = True
                    break
                await trio.sleep(0.05)
        seconds = trio.current_time() - started
        honest = await honest_handshake(node)
        sessions_left = len(node.connections.sessions)
        await trio.aclose_forcefully(session)
        return {
            "node_ok": honest and closed_by_node,
            "slow_session_closed": closed_by_node,
            "seconds_to_close": round(seconds, 1),
            "pings_sent_unread": sent,
            "honest_ok": honest,
            "sessions_left": sessions_left,
            "send_timeouts": node.connections.stats.rejected.get("send_timeout", 0),
        }


def slow_reader(root: Path, *, send_timeout_s: float, limit_s: float) -> dict[str, object]:
    return trio.run(_slow_reader, root, send_timeout_s, limit_s)


# --- poison_rounds ----------------------------------------------------------------------------


def poison_rounds(*, rounds: int = 40, local_steps: int = 1) -> dict[str, object]:
    """Forty rounds with one trusted poisoner (see :mod:`simulations.reliability.poison_rounds`),
    with the node's guards and, for comparison, without them (the node before issue #11)."""
    from simulations.reliability.poison_rounds import compare, run_rounds, speakers

    data = speakers(3)
    started = time.monotonic()
    guarded = compare(
        run_rounds(data, rounds=rounds, poisoned=False, local_steps=local_steps, seed=3),
        run_rounds(data, rounds=rounds, poisoned=True, local_steps=local_steps, seed=3),
    )
    unguarded = compare(
        run_rounds(
            data, rounds=rounds, poisoned=False, local_steps=local_steps, seed=3, guard=False
        ),
        run_rounds(
            data, rounds=rounds, poisoned=True, local_steps=local_steps, seed=3, guard=False
        ),
    )
    return {
        **guarded,
        "norm_ok": 1 / 1.5 <= float(guarded["norm_ratio"]) <= 1.5,
        "l1_ok": float(guarded["l1_ratio"]) <= 1.05,
        "without_guards": unguarded,
        "local_steps": local_steps,
        "seconds": round(time.monotonic() - started, 1),
    }


def stages(root: Path, *, quick: bool) -> list[tuple[str, Callable[[], object]]]:
    """This issue's stages for the bench's list (each reachable with ``--quick``)."""
    for name in ("tb", "maf", "fd", "sr"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return [
        ("trust_by_name", lambda: trust_by_name(root / "tb")),
        (
            "multi_address_flood",
            lambda: multi_address_flood(
                root / "maf", addresses=1000 if quick else 4097, rounds=2 if quick else 3
            ),
        ),
        ("fd_pressure", lambda: fd_pressure(root / "fd", nofile=200, strangers=183)),
        (
            "slow_reader",
            lambda: slow_reader(root / "sr", send_timeout_s=2.0 if quick else 10.0, limit_s=60),
        ),
        ("poison_rounds", lambda: poison_rounds(rounds=40, local_steps=1 if quick else 3)),
    ]
