"""Load: one node process, 64 peers handshaking at once (half trusted, exchanging bundles) from
distinct loopback addresses, while a caption job runs on the node.

Budget (CI): 1 wave of 64 handshakes + 1 caption job (about 25 s). The bench runs several waves
and jobs and reports the peak RSS and caption latency.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node_helpers import short_root
from tests.reliability.process_nodes import run_load
from tests.speech import synthesize_speech

pytestmark = pytest.mark.slow

PEERS = 64


def test_64_concurrent_handshakes_and_a_caption_job(tmp_path: Path) -> None:
    wav = synthesize_speech("Load test speech for a caption job.", tmp_path / "speech.wav")
    with short_root() as root:
        report = run_load(root, peers=PEERS, waves=1, speech_wav=wav)
    shown = report.as_dict()
    assert report.errors == 0, shown
    assert report.handshakes_ok == PEERS, shown
    # The node saw every handshake and refused none of them.
    assert report.node_handshakes_completed == PEERS, shown
    assert report.node_rejected == {}, shown
    assert len(report.caption_latencies_s) == 1, shown
    assert 0 < report.rss_mb_max < 4096, shown
