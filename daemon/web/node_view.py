"""The node at a glance for the web: status, peers, rounds and trust, from the running node.

The figures are the ones the status RPC serves (``RunningNode.status``, ``peer_list``,
``round_list``); trust goes through the node's own :class:`daemon.peers.PeerTable`, the table the
handshake consults, so a change takes effect at the next handshake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.peers import PeerError, format_peer_id, parse_peer_key

if TYPE_CHECKING:
    from daemon.node import RunningNode

__all__ = ["NodeView", "UnknownPeerRequestError"]


class UnknownPeerRequestError(Exception):
    status = 404


class NodeView:
    def __init__(self, node: RunningNode) -> None:
        self._node = node

    @property
    def user_language(self) -> str:
        return self._node.config.call.language

    def status(self) -> dict[str, object]:
        status = self._node.status()
        status["web_url"] = self._node.web_url
        return status

    def peers(self) -> list[dict[str, object]]:
        return self._node.peer_list()

    def rounds(self, *, limit: int = 50) -> list[dict[str, object]]:
        return self._node.round_list(limit=limit)

    def set_trust(self, peer_id: str, *, trusted: bool) -> dict[str, object]:
        """Trust or untrust a known peer named by its full id; returns its new entry."""
        try:
            key = parse_peer_key(peer_id)
        except PeerError:
            raise UnknownPeerRequestError("no such peer") from None
        if self._node.peers.get(key) is None:
            raise UnknownPeerRequestError("no such peer")
        canonical = format_peer_id(key)
        try:
            if trusted:
                self._node.peers.trust(canonical)
            else:
                self._node.peers.untrust(canonical)
        except PeerError as error:
            raise UnknownPeerRequestError(str(error)) from None
        for peer in self.peers():
            if peer["id"] == canonical:
                return peer
        raise UnknownPeerRequestError("no such peer")
