"""What the call service needs from a running node (a Protocol: calls never import the node)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from daemon.calls import CallObserver, CallService
    from daemon.codec_store import CodecStore
    from daemon.config import Config
    from daemon.connections import ConnectionManager
    from daemon.home import NodeHome
    from daemon.identity import Identity
    from daemon.peers import PeerTable
    from schemas.messages import Hello

__all__ = ["CallNode"]


class CallNode(Protocol):
    """The parts of :class:`daemon.node.RunningNode` that calls use."""

    config: Config
    home: NodeHome
    identity: Identity
    connections: ConnectionManager
    peers: PeerTable
    codecs: CodecStore
    call_service: CallService | None
    call_observers: list[CallObserver]

    def enforce_storage_limits(self) -> None: ...

    def hello(self) -> Hello: ...
