"""Load: one node process, 64 peers handshaking at once (half trusted, exchanging bundles) from
distinct loopback addresses, 8 concurrent calls of 30 s each, and a caption job, all at once.

Budget (CI): 1 wave of 64 handshakes + 8 calls of 29 s of speech at real time + 1 caption job
(about 1.5 min). The bench runs several waves and jobs and reports the same figures.

Oracles: the handshakes answer their own pings, the node's own counters agree with what the
peers saw, every call completes with the listener's summary, and each call's English captions
match the script the caller read (WER), so the load did not cost the captions their words.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.bench_call import SCRIPT_SENTENCES, script_audio, trained_caller_checkpoint
from simulations.node_helpers import short_root
from simulations.reliability.process_nodes import CallLoad, run_load
from tests.speech import synthesize_speech

pytestmark = pytest.mark.slow

PEERS = 64
CALLS = 8


def test_64_handshakes_8_calls_and_a_caption_job_at_once(tmp_path: Path) -> None:
    wav = synthesize_speech("Load test speech for a caption job.", tmp_path / "speech.wav")
    audio = script_audio(SCRIPT_SENTENCES)
    assert 28.0 <= audio.shape[0] / 16000 <= 32.0  # "calls of 30 s each"
    calls = CallLoad(
        calls=CALLS,
        audio=audio,
        script=" ".join(SCRIPT_SENTENCES),
        checkpoint=trained_caller_checkpoint(),
    )
    with short_root() as root:
        report = run_load(root, peers=PEERS, waves=1, speech_wav=wav, calls=calls)
    shown = report.as_dict()
    assert report.errors == 0, shown
    assert report.handshakes_ok == PEERS, shown
    # The node saw every handshake (the callers' too) and refused none of them.
    assert report.node_handshakes_completed == PEERS + CALLS, shown
    assert report.node_rejected == {}, shown
    assert len(report.caption_latencies_s) == 1, shown
    assert report.calls_completed == CALLS, shown
    assert report.call_audio_s == pytest.approx(CALLS * audio.shape[0] / 16000, abs=CALLS * 0.1)
    # Every call's listener measured its caption latency, and every call kept its words.
    assert len(report.call_caption_p95_s) == CALLS, shown
    assert max(report.call_wers) <= 0.15, shown
    assert 0 < report.rss_mb_max < 4096, shown
