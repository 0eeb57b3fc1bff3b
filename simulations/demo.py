"""``make demo``: two nodes, one two-way translated call (English ↔ Portuguese), on this machine.

1. ``parley init`` makes two node homes (alice calls, bob listens) in a temporary folder.
2. Alice's codec is enrolled on recordings of her voice (piper's "joe" reading Harvard sentences
   from lists 1-8); the result is cached under ``build/call-codec``, so only the first demo on a
   machine trains it.
3. Both nodes start on 127.0.0.1 and find each other as static peers; each trusts the other
   (``parley peers trust``), so the handshake carries alice's codec bundle to bob.
4. Alice calls bob and reads held-out Harvard sentences (never trained on) at real time; bob's
   node answers (he trusts her) and plays his ``call.input``, Portuguese sentences read by
   espeak-ng, at the same time. Each node decodes the other's codec frames, captions them with
   Whisper, translates the captions and speaks them in its user's language; each side's
   captions of the other's speech go back to the speaker. Both sides' captions are printed
   live (file-fed: no sound devices needed).
5. Where each side's received speech was written, the files and the latency summary are
   printed at the end.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio
from rich.console import Console

from daemon.call_cli import render_call_summary
from daemon.calls import CallerCaptions, ListenSettings
from daemon.cli import main as parley
from daemon.node import RunningNode
from daemon.web.auth import TOKEN_FILE_NAME
from media.features import SAMPLE_RATE
from schemas.messages import Caption
from simulations.bench_call import (
    call_two_way,
    open_two_way_pair,
    trained_caller_checkpoint,
    two_way_models,
    two_way_speech,
    write_wav,
)

#: About 15 s of speech: the demo must finish within two minutes.
DEMO_SCRIPT = (
    "Stop whistling and watch the boys march.",
    "A new wax protects the deep scratch.",
    "The cup cracked and spilled its contents.",
    "Guess the results from the first scores.",
    "The birch trees were bare and lonely.",
)
#: Bob's side, at the same time (espeak-ng's Brazilian voice).
BOB_SCRIPT = (
    "Bom dia, eu estou ouvindo você muito bem.",
    "Hoje o tempo está bonito aqui na cidade.",
    "Vamos conversar de novo amanhã à tarde.",
)

console = Console(highlight=False, soft_wrap=True)


def _step(text: str) -> None:
    console.print(f"[bold]==[/bold] {text}")


class _LivePrinter:
    """Prints each finalized caption once, as it arrives."""

    def __init__(self) -> None:
        self._shown = 0

    def __call__(self, captions: CallerCaptions) -> None:
        for caption in captions.all[self._shown :]:
            if caption.final:
                self._print(caption)
        self._shown = len(captions.all)

    def theirs(self, captions: object) -> None:
        """Alice's node's captions of bob's speech (called with each batch)."""
        for caption in captions if isinstance(captions, list | tuple) else []:
            if isinstance(caption, Caption) and caption.final:
                self._print(caption, who="bob  ")

    @staticmethod
    def _print(caption: Caption, who: str = "alice") -> None:
        style = "cyan" if caption.language == "en" else "green"
        console.print(
            f"   {who} [{style}]{caption.language}[/{style}] "
            f"{caption.start_s:5.1f}-{caption.end_s:5.1f} s  {caption.text}"
        )


async def _call(root: Path, checkpoint: Path) -> None:
    # Alice talks over bob from the start and goes on past him, then hangs up.
    speech = two_way_speech(DEMO_SCRIPT, BOB_SCRIPT)
    audio, bob_audio = speech.en, speech.pt
    bob_input = root / "bob-speaks.wav"
    write_wav(bob_input, bob_audio)
    _step("loading Whisper (tiny.en, base), both translators and both voices")
    models = await two_way_models(root / "whisper-cache")
    _step("starting both nodes on 127.0.0.1; alice and bob trust each other")
    async with open_two_way_pair(
        root,
        checkpoint=checkpoint,
        models=models,
        names=("alice", "bob"),
        listener_web_port=0,
        listener_input=str(bob_input),
    ) as pair:
        bob = pair.listener
        console.print(f"   bob listens on 127.0.0.1:{bob.listen_port}, id {bob.peer_id[:16]}")
        for peer in pair.caller.peers.known():
            where = ", ".join(f"{host}:{port}" for host, port in peer.addresses)
            console.print(f"   alice knows {peer.name} at {where}: {peer.trust.value}")
        seconds = audio.shape[0] / SAMPLE_RATE
        _step(
            f"alice calls bob and speaks {seconds:.0f} s of English (real time) while bob "
            f"speaks {bob_audio.shape[0] / SAMPLE_RATE:.0f} s of Portuguese"
        )
        out = root / "alice-received"
        out.mkdir()
        printer = _LivePrinter()
        call = await call_two_way(
            pair,
            audio=audio,
            out_base=out / "ours",
            on_update=printer,
            listen=ListenSettings(models=models, call_dir=out, on_captions=printer.theirs),
        )
        _step("alice's recording goes to bob's web page to be captioned (its HTTP API)")
        await _caption_on_web(bob, audio, root / "alice-reads.wav")
    record = call.record
    _step(f"call over after {call.wall_s:.1f} s; bob's node wrote:")
    if record.call_dir is not None:
        for path in sorted(record.call_dir.iterdir()):
            console.print(f"   {path}  ({path.stat().st_size} bytes)")
    summary_of_call = record.summary or {}
    console.print(
        f"   Portuguese speech: {summary_of_call.get('speech_s', 0):.1f} s at "
        f"{summary_of_call.get('speech_sample_rate')} Hz in received.pt.wav"
    )
    _step("alice's node wrote (bob's speech captioned in pt and en, and spoken in English):")
    for path in sorted(out_files(root / "alice-received")):
        console.print(f"   {path}  ({path.stat().st_size} bytes)")
    heard = call.outcome.listener_summary or {}
    console.print(
        f"   English speech: {heard.get('speech_s', 0):.1f} s at "
        f"{heard.get('speech_sample_rate')} Hz in {root / 'alice-received' / 'received.en.wav'}"
    )
    summary: dict[str, object] = {
        "caller_latency": {"encode": call.outcome.encode_latency.summary("encode")},
        "callee": record.summary,
    }
    console.print(render_call_summary(summary))
    console.print(
        "   latency = bob's clock when a caption is final minus when its last word was spoken "
        "(alice plays her audio in real time); network includes alice's 100 ms batching"
    )


def out_files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.is_file()]


async def _caption_on_web(bob: RunningNode, audio: npt.NDArray[np.float32], wav: Path) -> None:
    """Upload ``audio`` to bob's web API as a recording to caption in en + pt; wait for it."""
    import httpx

    from simulations.corpus import write_float_wav

    write_float_wav(wav, audio, SAMPLE_RATE)
    token = (bob.home.root / TOKEN_FILE_NAME).read_text().strip()
    assert bob.web_url is not None
    async with httpx.AsyncClient(
        base_url=bob.web_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as client:
        with wav.open("rb") as media:
            response = await client.post(
                "/api/recordings",
                files={"file": (wav.name, media.read(), "audio/wav")},
                data={"to": "pt"},
            )
        response.raise_for_status()
        recording_id = response.json()["id"]
        with trio.fail_after(300):
            while True:
                item = (await client.get(f"/api/recordings/{recording_id}")).json()
                if item["status"] in ("ready", "failed"):
                    break
                await trio.sleep(0.5)
    console.print(
        f"   {wav.name}: {item['status']}"
        + (f", tracks {', '.join(item['languages'])}" if item["status"] == "ready" else "")
        + (f" ({item['reason']})" if item["reason"] else "")
    )


#: bob's config for the command printed at the end: this machine only, no mDNS.
BOB_CONFIG = """# Written by the parley demo: bob on this machine only.
[listen]
host = "127.0.0.1"

[discovery]
mdns = false

[fl]
round_interval_min = 0
"""


def main() -> None:
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="parley-demo-"))
    for name in ("alice", "bob"):
        _step(f"parley init --home {root / name}")
        parley(["init", "--home", str(root / name)])
    _step("enrolling alice's codec on recordings of her voice (cached after the first run)")
    checkpoint = trained_caller_checkpoint(progress=lambda text: console.print(f"   {text}"))
    try:
        trio.run(_call, root, checkpoint)
    except KeyboardInterrupt:
        sys.exit(130)
    console.print(f"demo done in {time.perf_counter() - started:.0f} s; homes kept in {root}")
    bob = root / "bob"
    (bob / "config.toml").write_text(BOB_CONFIG)
    console.print(
        "bob's web page has the call's captions and the captioned recording; to see it, run:"
    )
    print(f"{sys.executable} -m daemon.cli node --home {bob} --open")


if __name__ == "__main__":
    main()
