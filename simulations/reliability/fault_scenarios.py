"""Faults from the node's own environment (issue 11, items 1 and 2), for the tests and for
``parley bench reliability`` (stages ``stranger_calls``, ``locked_db``, ``disk_full``).

Each case runs a real node in this trio run on 127.0.0.1 (no mDNS) and returns plain figures.
The full disk is a stand-in: the checkpoint writer is replaced by one that raises
``OSError(ENOSPC)`` (filling a real file system is not something a test may do here); the
locked database is real (another process holds SQLite's write lock on ``node.db``).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

import codec.checkpoint
from codec.checkpoint import load_checkpoint
from daemon.calls import CallError, dial_peer
from daemon.database import PeerSource, RoundStatus, RoundStore, open_database
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.rpc_client import RpcClientError, call
from handshake.noise import StaticIdentity
from schemas.messages import CallEnd
from simulations.node_helpers import initiate_to, loopback_config, make_home
from simulations.reliability.scenarios import call_start_on_our_codec, honest_handshake

RPC_DEADLINE_S = 10.0


async def _status_ok(node: RunningNode, *, timeout: float = RPC_DEADLINE_S) -> bool:
    try:
        status = await call(node.home.socket_path, "status", timeout=timeout)
    except RpcClientError:
        return False
    return isinstance(status, dict) and status.get("node_id") == node.peer_id


# -- stranger_calls ---------------------------------------------------------------------------


async def _stranger_call(node: RunningNode) -> str:
    """One stranger tries to place a call; returns how far it got."""
    stranger = StaticIdentity.generate()
    ours = node.codecs.current()
    try:
        session = await dial_peer(
            identity=stranger,
            public_key=node.identity.public_key,
            addresses=[("127.0.0.1", node.listen_port)],
            hello=node.hello(),
            bundle=ours.bundle,
        )
    except CallError:
        return "refused_at_handshake"
    start = call_start_on_our_codec(node, call_id=1)
    async with session:
        await session.send_message(start)
        with trio.fail_after(60):
            reply = await session.receive_message()
    if isinstance(reply, CallEnd) and reply.reason != "completed":
        return "refused_at_call_start"
    return "accepted"


async def case_stranger_calls(root: Path, *, strangers: int = 5) -> dict[str, Any]:
    """Strangers call a node with the default config, then one with ``calls_from = "known"``
    (a stranger that dials in is not known there either). ``accepted`` must be 0."""
    outcomes: dict[str, int] = {}
    for calls_from in ("trusted", "known"):
        home, _ = make_home(root, f"listener-{calls_from}")
        config = loopback_config(name="listener", mdns=False)
        if calls_from != "trusted":
            config = config.replace("trust", calls_from=calls_from)
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            for _ in range(strangers):
                outcome = await _stranger_call(node)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            honest = await honest_handshake(node)
    return {
        "attempts": 2 * strangers,
        "accepted": outcomes.get("accepted", 0),
        "refused_at_handshake": outcomes.get("refused_at_handshake", 0),
        "refused_at_call_start": outcomes.get("refused_at_call_start", 0),
        "honest_ok": honest,
    }


# -- locked_db --------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_write_lock(path: Path, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holds ``path``'s SQLite write lock for ``seconds``."""
    script = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('ROLLBACK')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(seconds)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"locked":
            raise RuntimeError("the lock holder did not start")
        yield holder
    finally:
        holder.wait(timeout=seconds + 30)
        if holder.stdout is not None:
            holder.stdout.close()


async def case_locked_db(root: Path, *, hold_s: float = 8.0) -> dict[str, Any]:
    """``node.db`` locked by another process for ``hold_s`` while a trusted peer and a
    stranger handshake; the node must keep answering and serve again once the lock is gone."""
    home, _ = make_home(root, "locked")
    config = loopback_config(name="locked", mdns=False)
    friend = StaticIdentity.generate()
    survived = False
    answered_while_locked = False
    honest_after = False
    faults: dict[str, Any] = {}
    async with open_node(home, config, NodeOptions(listen_port=0)) as node:
        node.peers.observe(friend.public, name="friend", address=None, source=PeerSource.STATIC)
        node.peers.trust(friend.public.hex())
        locked_at = time.monotonic()
        with hold_write_lock(home.database_path, hold_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_handshake_quietly, node, friend)
                nursery.start_soon(_handshake_quietly, node, StaticIdentity.generate())
                await trio.sleep(0.5)
                answered_while_locked = await _status_ok(node, timeout=3.0)
            # Wait for the holder to let go (the handshakes' own database work waited for it).
            await trio.sleep(max(0.0, hold_s - (time.monotonic() - locked_at)))
        # Lock released: the node answers and serves a trusted peer again.
        survived = await _status_ok(node)
        honest_after = await honest_handshake(node, friend)
        faults = node.faults.as_dict()
    return {
        "hold_s": hold_s,
        "node_survived": survived and honest_after,
        "status_while_locked": answered_while_locked,
        "faults": faults,
    }


async def _handshake_quietly(node: RunningNode, identity: StaticIdentity) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.TooSlowError, OSError):
        with trio.fail_after(30):
            session = await initiate_to(node, identity)
            async with session:
                with contextlib.suppress(trio.EndOfChannel):
                    await session.receive_message()  # until the node closes it


# -- disk_full --------------------------------------------------------------------------------


@contextlib.contextmanager
def full_disk_checkpoint_writer() -> Iterator[None]:
    """Stand-in for a full disk: the checkpoint writer raises ``OSError(ENOSPC)``."""

    def no_space(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    # codec.checkpoint imported the writer by name: replace that name, where the writes happen.
    original = getattr(codec.checkpoint, "write_atomic")  # noqa: B009 (not re-exported for mypy)
    setattr(codec.checkpoint, "write_atomic", no_space)  # noqa: B010
    try:
        yield
    finally:
        setattr(codec.checkpoint, "write_atomic", original)  # noqa: B010


async def case_disk_full_with_stand_in_writer(root: Path) -> dict[str, Any]:
    """An FL round whose checkpoint write meets a full disk (stand-in writer, see above)."""
    home, _ = make_home(root, "diskfull")
    config = loopback_config(name="diskfull", mdns=False)
    async with open_node(home, config, NodeOptions(listen_port=0)) as node:
        with full_disk_checkpoint_writer():
            try:
                answer = await call(
                    node.home.socket_path, "round.start", {"wait": True}, timeout=120
                )
            except RpcClientError as error:
                answer = {"rpc_error": str(error)}
        survived = await _status_ok(node) and await honest_handshake(node)
        rounds = await call(node.home.socket_path, "rounds", timeout=RPC_DEADLINE_S)
        # The node still works: the next round, with room on the disk, completes.
        after = await call(node.home.socket_path, "round.start", {"wait": True}, timeout=120)
    round_status = answer.get("status") if isinstance(answer, dict) else None
    reason = answer.get("record", {}).get("error") if isinstance(answer, dict) else None
    loadable = True
    try:
        load_checkpoint(home.models_dir / "codec.ckpt")
        with open_database(home.database_path) as database:
            stuck = [r for r in RoundStore(database).recent() if r.status is RoundStatus.RUNNING]
        loadable = not stuck
    except Exception:
        loadable = False
    return {
        "round_status": round_status,
        "reason": reason,
        "rounds_listed": [item["status"] for item in rounds] if isinstance(rounds, list) else None,
        "next_round_status": after.get("status") if isinstance(after, dict) else None,
        "node_survived": survived,
        "state_loadable": loadable,
    }
