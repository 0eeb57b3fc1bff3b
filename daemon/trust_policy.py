"""Who gets what: the node's trust rules in one place (DESIGN.md §3).

* Only **trusted** peers receive our weights (as initiator in message 3, as responder in the
  first transport message) and only their bundles are aggregated.
* Calls are accepted according to ``trust.calls_from``: from trusted peers only, from any
  peer we know (the default), or from anyone.
* A blocked peer is refused outright.
* A key we have never seen is recorded (trust on first use) and then treated as known.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.database import PeerSource, TrustState
from daemon.peers import PeerTable
from handshake.handshake import TrustDecision


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    peers: PeerTable
    calls_from: str = "known"

    def send_weights_to(self, public_key: bytes) -> bool:
        return self.peers.is_trusted(public_key)

    def aggregate_from(self, public_key: bytes) -> bool:
        return self.peers.is_trusted(public_key)

    def decide_initiator(self, public_key: bytes) -> TrustDecision:
        """The responder's verdict on an authenticated initiator key (after message 3)."""
        record = self.peers.get(public_key)
        if record is None:
            record = self.peers.record_handshake(
                public_key, address=None, source=PeerSource.INBOUND
            )
        if record.trust is TrustState.BLOCKED:
            return TrustDecision.REJECT
        if record.trust is TrustState.TRUSTED:
            return TrustDecision.TRUSTED
        if self.calls_from == "trusted":
            return TrustDecision.REJECT
        return TrustDecision.KNOWN
