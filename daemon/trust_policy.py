"""Who gets what: the node's trust rules in one place (docs/design.md, "Trust").

* Only **trusted** peers receive our weights (as initiator in message 3, as responder in the
  first transport message) and only their bundles are aggregated.
* Calls are accepted according to ``trust.calls_from`` (:func:`call_refusal`, checked at every
  ``CallStart`` against the trust list as it is then):

  - ``trusted`` (the default): trusted peers only; other initiators are refused at the
    handshake already;
  - ``known``: also peers this node learned of through discovery (mDNS, static config): a key
    that merely dialed in (source ``inbound``) is a stranger, however often it did;
  - ``anyone``: every key that is not blocked, strangers included.
* A blocked peer is refused outright.
* A key we have never seen is recorded (trust on first use) as ``known``, source ``inbound``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from daemon.database import PeerRecord, PeerSource
from daemon.peers import PeerTable
from daemon.trust import CallsFrom, TrustState
from handshake.handshake import TrustDecision


def call_refusal(calls_from: CallsFrom | str, record: PeerRecord | None) -> str | None:
    """Why a caller whose trust-list entry is ``record`` (None: not in the list) may not call."""
    if record is not None and record.trust is TrustState.BLOCKED:
        return "calls are not accepted from this peer (blocked)"
    if record is not None and record.trust is TrustState.TRUSTED:
        return None
    admitted = CallsFrom(calls_from)
    if admitted is CallsFrom.TRUSTED:
        return "calls are accepted from trusted peers only"
    if admitted is CallsFrom.KNOWN:
        if record is None or record.source is PeerSource.INBOUND:
            return "calls are accepted from known peers only (discovered or configured)"
        return None
    return None


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    peers: PeerTable
    calls_from: CallsFrom = CallsFrom.TRUSTED
    #: Records a never-seen initiator key later, off the event loop (the decision itself runs
    #: inside the handshake and only reads). None: recorded here, synchronously.
    on_first_contact: Callable[[bytes], None] | None = None

    def __post_init__(self) -> None:
        # The config gives the setting's word; one vocabulary from here on (daemon.trust).
        object.__setattr__(self, "calls_from", CallsFrom(self.calls_from))

    def send_weights_to(self, public_key: bytes) -> bool:
        return self.peers.is_trusted(public_key)

    def aggregate_from(self, public_key: bytes) -> bool:
        return self.peers.is_trusted(public_key)

    def decide_initiator(self, public_key: bytes) -> TrustDecision:
        """The responder's verdict on an authenticated initiator key (after message 3)."""
        record = self.peers.get(public_key)
        if record is None:
            if self.on_first_contact is not None:
                self.on_first_contact(public_key)
                if self.calls_from is CallsFrom.TRUSTED:
                    return TrustDecision.REJECT
                return TrustDecision.KNOWN
            record = self.peers.record_handshake(
                public_key, address=None, source=PeerSource.INBOUND
            )
        if record.trust is TrustState.BLOCKED:
            return TrustDecision.REJECT
        if record.trust is TrustState.TRUSTED:
            return TrustDecision.TRUSTED
        if self.calls_from is CallsFrom.TRUSTED:
            return TrustDecision.REJECT
        return TrustDecision.KNOWN
