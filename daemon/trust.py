"""The trust vocabulary, in one place: the words the trust list, the config, the policy, the
sessions and the status use for who may do what (docs/design.md, "Trust").

* :class:`TrustState`: a key's entry in the trust list (``node.db``).
* :class:`CallsFrom`: the ``trust.calls_from`` setting, whom this node takes calls from; its
  first two values name trust states, ``anyone`` admits every key not blocked.
* :class:`SessionTrust`: what an open session is, from our side: the responder's verdict on
  the initiator (``trusted`` / ``known``, from :class:`handshake.handshake.TrustDecision`), or
  ``initiated`` when we dialed.

All three are ``StrEnum``: their values are the words a user types in config.toml and reads in
``parley status``, so they compare equal to those strings.
"""

from __future__ import annotations

import enum


class TrustState(enum.StrEnum):
    """Trust list state. ``known`` is trust-on-first-use pinned but not trusted with weights."""

    TRUSTED = "trusted"
    KNOWN = "known"
    BLOCKED = "blocked"


class CallsFrom(enum.StrEnum):
    """``trust.calls_from``: whose calls this node accepts."""

    #: Trusted peers only; other initiators are refused at the handshake already.
    TRUSTED = "trusted"
    #: Also peers learned through discovery (mDNS, static config), not keys that only dialed in.
    KNOWN = "known"
    #: Every key that is not blocked, strangers included.
    ANYONE = "anyone"


class SessionTrust(enum.StrEnum):
    """What one open session is, as ``parley status`` shows it."""

    TRUSTED = "trusted"
    KNOWN = "known"
    #: We dialed: the handshake's trust decision is the responder's, not ours.
    INITIATED = "initiated"


__all__ = ["CallsFrom", "SessionTrust", "TrustState"]
