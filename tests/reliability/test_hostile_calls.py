"""A hostile caller against the node's call handler: codec frames far faster than real time.

Budget: one node serving calls, one handshake, a CallStart and 60 s of codec frames sent at
once (the listener loads Whisper and a synthesizer for the call first: about 15 s).
The 1 MB caption case is in ``test_hostile.py`` (decoder and session level, any session).
"""

from __future__ import annotations

import pytest

from simulations.node_helpers import short_root
from simulations.reliability.call_scenarios import case_call_flood

pytestmark = pytest.mark.slow


async def test_codec_frames_faster_than_real_time_end_the_call_and_are_counted() -> None:
    with short_root() as root:
        result = await case_call_flood(root, seconds_of_audio=60)
    shown = result.as_dict()
    assert result.rejected == 1, shown
    assert "faster than" in str(result.detail["call_end_reason"]), shown
    assert result.detail["closing"] in ("bye", "eof", "reset"), shown
    assert result.honest_peer_ok, shown
