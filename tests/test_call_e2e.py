"""A whole call between two real nodes on loopback: handshake with codec bundles, codec frames at
real time, and on the listener's side captions, a Portuguese transcript and synthesized speech.

The caller speaks with piper's "joe" voice; its codec was enrolled on other sentences read by
that voice (``simulations.bench_call``, cached under ``build/call-codec``). The script is held-out
Harvard sentences. Oracles: the script (WER), the translation backend run again on the listener's
English cues (the Portuguese track), the synthesizer's own sample rate, and two independent
caption parsers (``srt``, ``webvtt-py``).
"""

from __future__ import annotations

import json
import wave

import pytest
import srt
import webvtt

from media.call_receiver import LATENCY_STAGES
from media.captions import retime_text
from media.wer import wer
from simulations.bench_call import (
    EN_TO_PT,
    SCRIPT_SENTENCES,
    call_over_loopback,
    open_call_pair,
    prepare_one_way,
)
from simulations.node_helpers import short_root

pytestmark = pytest.mark.slow

# About 15 s of speech: the first five held-out sentences of the bench's script.
SCRIPT = SCRIPT_SENTENCES[:5]


def _cue_texts(path):
    return [" ".join(item.content.split()) for item in srt.parse(path.read_text())]


async def test_a_translated_call_between_two_nodes():
    setup = await prepare_one_way(SCRIPT)
    checkpoint, models, audio = setup.checkpoint, setup.models, setup.audio
    with short_root() as root:
        out = root / "out"
        out.mkdir()
        async with open_call_pair(root, caller_checkpoint=checkpoint, models=models) as pair:
            call = await call_over_loopback(
                pair,
                audio=audio,
                request=EN_TO_PT,
                out_base=out / "call",
            )
            calls_status = pair.listener.status()["calls"]
        record = call.record
        assert record.call_dir is not None
        call_dir = record.call_dir
        assert call_dir.parent == call.listener_home.root / "calls"

        # The listener's English captions match the script.
        english = _cue_texts(call_dir / "call.en.srt")
        assert wer(" ".join(SCRIPT), " ".join(english)) <= 0.10, english

        # Its Portuguese track is the backend's translation of those cues, cue by cue.
        translator = models.translator("en", "pt")
        cues = list(webvtt.read(str(call_dir / "call.en.vtt")).captions)
        assert [" ".join(c.text.split()) for c in cues] == english
        srt_cues = list(srt.parse((call_dir / "call.en.srt").read_text()))
        from media.captions import Cue

        as_cues = [
            Cue(
                index=i + 1,
                start_s=c.start.total_seconds(),
                end_s=c.end.total_seconds(),
                lines=tuple(c.content.splitlines()),
            )
            for i, c in enumerate(srt_cues)
        ]
        expected = retime_text(as_cues, translator.translate(english))
        assert _cue_texts(call_dir / "call.pt.srt") == [c.text for c in expected]
        pt_vtt = webvtt.read(str(call_dir / "call.pt.vtt")).captions
        assert [" ".join(c.text.split()) for c in pt_vtt] == [c.text for c in expected]

        # Speech in the listener's language, at the synthesizer's own rate, not empty.
        synthesizer = models.synthesizer("pt")
        rate = synthesizer.synthesize("olá").sample_rate
        with wave.open(str(call_dir / "received.pt.wav")) as speech:
            assert speech.getframerate() == rate
            assert speech.getsampwidth() == 2 and speech.getnchannels() == 1
            assert speech.getnframes() > rate  # more than a second of speech

        # The summary has every latency field, with samples for each stage.
        summary = json.loads((call_dir / "summary.json").read_text())
        for stage in LATENCY_STAGES:
            entry = summary["latency"][stage]
            assert entry["count"] > 0, stage
            assert entry["p50_s"] is not None and entry["p95_s"] is not None, stage
        assert summary["ended_by"] == "caller"
        # The listener's status reports the call, with the latencies of its summary.
        assert isinstance(calls_status, dict) and calls_status["active"] == 0
        assert calls_status["recent"][-1]["reason"] == "completed"
        assert calls_status["recent"][-1]["latency"] == summary["latency"]
        assert summary["audio_s"] == pytest.approx(audio.shape[0] / 16000, abs=0.1)

        # The caller got the same captions back, live, and the summary with its CallEnd.
        outcome = call.outcome
        assert outcome.completed
        assert outcome.callee_summary is not None
        assert set(outcome.callee_summary["latency"]) >= {"network", "decode", "asr", "caption"}
        finals = call.captions.finals
        assert [c.text for c in finals["en"]] == english
        assert [c.text for c in finals["pt"]] == translator.translate(english)
        assert _cue_texts(out / "call.en.srt") == english
        assert any(not c.final for c in call.captions.all), "no live partial caption"
        assert outcome.encode_latency.summary("encode")["count"] > 0
