"""A two-way call between two real nodes on loopback, both people speaking at once (issue 14).

Ben (the caller, English, piper's "joe" through his enrolled codec) and Ana (the callee, whose
node answers with its own ``CallStart`` and plays its ``call.input``: Portuguese sentences read
by espeak-ng's Brazilian voice, through the same enrolled codec as in tests/test_call_languages)
speak over each other. Each node runs the listener pipeline for the other's frames. Oracles: the
scripts (WER of each listener's source captions), the translation engine run again on those
captions (each translated track), and each side's own speech captioned by the other side.
"""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
import srt

from daemon.calls import ListenSettings
from media.call_protocol import CallEndReason, CallRole
from media.captions import Cue, retime_text
from media.wer import wer
from simulations.bench_call import call_two_way, open_two_way_pair, prepare_two_way, write_wav
from simulations.node_helpers import short_root
from tests.markers import needs_apertium

pytestmark = [pytest.mark.slow, needs_apertium]

#: espeak-ng's Brazilian voice through Whisper base misses 0.3 even on clean audio (issue 13's
#: note: 0.31 on this script without the codec); the English side is held to the issue's 0.3.
WER_BOUND = {"en": 0.3, "pt": 0.45}


def _cue_texts(path: Path) -> list[str]:
    return [" ".join(item.content.split()) for item in srt.parse(path.read_text())]


def _expected_translation(source_srt: Path, texts: list[str], translated: list[str]) -> list[str]:
    cues = [
        Cue(
            index=i + 1,
            start_s=c.start.total_seconds(),
            end_s=c.end.total_seconds(),
            lines=tuple(c.content.splitlines()),
        )
        for i, c in enumerate(srt.parse(source_srt.read_text()))
    ]
    return [c.text for c in retime_text(cues, translated)]


async def test_both_people_speak_and_each_hears_the_other_in_their_language(
    tmp_path: Path,
) -> None:
    # Ben talks over Ana from the start; his recording runs on past hers, then he hangs up.
    setup = await prepare_two_way(tmp_path / "whisper-cache")
    checkpoint, models = setup.checkpoint, setup.models
    en_script, pt_script = setup.en_script, setup.pt_script
    en_audio, pt_audio = setup.speech.en, setup.speech.pt
    with short_root() as root:
        ana_input = root / "ana-speaks.wav"
        write_wav(ana_input, pt_audio)
        ben_dir = root / "ben-call"
        ben_dir.mkdir()
        async with open_two_way_pair(
            root, checkpoint=checkpoint, models=models, listener_input=str(ana_input)
        ) as pair:
            call = await call_two_way(
                pair,
                audio=en_audio,
                out_base=ben_dir / "ours",
                listen=ListenSettings(models=models, call_dir=ben_dir),
            )
        outcome = call.outcome
        assert outcome.summary is not None and outcome.summary.role is CallRole.CALLER
        assert outcome.summary.reason is CallEndReason.HANGUP and outcome.completed
        assert call.record.end_reason is CallEndReason.COMPLETED
        assert outcome.not_listening == ""

        # Ana's node heard Ben: English captions, their Portuguese translation, speech.
        ana_dir = call.record.call_dir
        assert ana_dir is not None
        ana_heard = _cue_texts(ana_dir / "call.en.srt")
        assert wer(" ".join(en_script), " ".join(ana_heard)) <= WER_BOUND["en"], ana_heard
        en_to_pt = models.translator("en", "pt").translate(ana_heard)
        assert _cue_texts(ana_dir / "call.pt.srt") == _expected_translation(
            ana_dir / "call.en.srt", ana_heard, en_to_pt
        )
        # Ben's node heard Ana: Portuguese captions, their English translation, speech.
        ben_heard = _cue_texts(ben_dir / "call.pt.srt")
        assert wer(" ".join(pt_script), " ".join(ben_heard)) <= WER_BOUND["pt"], ben_heard
        pt_to_en = models.translator("pt", "en").translate(ben_heard)
        assert _cue_texts(ben_dir / "call.en.srt") == _expected_translation(
            ben_dir / "call.pt.srt", ben_heard, pt_to_en
        )
        finals = call.captions.finals
        for speech_path in (ana_dir / "received.pt.wav", ben_dir / "received.en.wav"):
            with wave.open(str(speech_path)) as speech:
                assert speech.getnframes() > speech.getframerate(), speech_path

        # Each side got the other's captions of its own speech, in both languages.
        assert [c.text for c in finals["en"]] == ana_heard
        assert [c.text for c in finals["pt"]] == en_to_pt
        assert _cue_texts(ana_dir / "ours.pt.srt") == ben_heard
        assert _cue_texts(ana_dir / "ours.en.srt") == _expected_translation(
            ana_dir / "ours.pt.srt", ben_heard, pt_to_en
        )
        # Both directions at once: Ben heard all of Ana's recording (then her quiet room)
        # while he spoke; the call lasted about as long as his recording.
        listener_summary = outcome.listener_summary
        assert listener_summary is not None
        assert listener_summary["audio_s"] >= pt_audio.shape[0] / 16000 - 0.3
        assert call.record.summary is not None
        assert call.record.summary["audio_s"] == pytest.approx(en_audio.shape[0] / 16000, abs=0.3)
        assert call.record.summary is not None
        assert call.record.summary["ended_by"] == "caller"
