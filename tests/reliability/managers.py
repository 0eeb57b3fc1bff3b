"""A ConnectionManager on its own (no node), for tests of the connection layer's limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from daemon.connections import ConnectionManager
from daemon.database import PeerStore, open_database
from daemon.peers import PeerTable
from daemon.trust import CallsFrom
from daemon.trust_policy import TrustPolicy
from handshake.noise import StaticIdentity
from schemas.messages import PROTOCOL_VERSION, Hello
from simulations.node_helpers import short_root

#: What the lone manager says of itself in its handshakes.
PLAIN_HELLO = Hello(
    protocol_version=PROTOCOL_VERSION,
    capabilities=(),
    codec_architecture="csm",
    codec_version_hash=b"\x00" * 32,
)


@contextmanager
def fresh_peer_table(ttl: float = 300) -> Iterator[PeerTable]:
    """A peer table over a new ``node.db`` in a short temporary folder, closed afterwards."""
    with short_root() as root:
        database = open_database(root / "node.db")
        try:
            yield PeerTable(PeerStore(database), ttl=ttl)
        finally:
            database.close()


@contextmanager
def lone_manager(
    *,
    identity: StaticIdentity | None = None,
    calls_from: CallsFrom = CallsFrom.TRUSTED,
    **options: Any,
) -> Iterator[ConnectionManager]:
    """A manager with ``PLAIN_HELLO``, no bundle of its own and none kept from peers, over
    :func:`fresh_peer_table`; ``options`` are the ConnectionManager's limits and settings."""
    with fresh_peer_table() as peers:
        yield ConnectionManager(
            identity=identity if identity is not None else StaticIdentity.generate(),
            hello=lambda: PLAIN_HELLO,
            our_bundle=lambda: None,  # type: ignore[arg-type,return-value]
            peers=peers,
            policy=TrustPolicy(peers, calls_from=calls_from),
            on_bundle=lambda key, bundle: None,
            **options,
        )
