"""``parley call PEER --in FILE --lang pt [--from en] [--out DIR]``: place a translated call.

The call is placed from this process with the home's identity, peer table and codec (the callee
is a running node: see :mod:`daemon.calls`). The peer is a known peer's name or id, or
``host:port:key``; it must be trusted, because the callee decodes our voice with our codec and
our codec bundle only goes to trusted peers.

While the call runs, the terminal shows the captions that come back (a live partial line in our
language and the finalized lines in both). At the end the caption tracks the caller received
(``call.<lang>.vtt/.srt``) and ``summary.json`` are in ``--out`` (default
``./parley-call-<id>/``), and a table gives p50/p95 per stage: encode (measured here), then
network, decode, ASR, translation, TTS and end of utterance -> finalized caption (measured by the
callee, sent back with its ``CallEnd``).

Registered by ``daemon.cli`` as ``app.command("call")(call_command)``; ``daemon.cli`` is imported
lazily so that registration creates no import cycle.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from daemon.cli_options import HomeOption

if TYPE_CHECKING:
    from daemon.calls import CallerCaptions, CallOutcome

__all__ = ["call_command", "render_call_summary", "render_captions"]

#: Finalized lines kept on screen per language.
SHOWN_LINES: Final = 6
#: Stages of the summary table: (label, where the figure comes from, stage name).
TABLE_STAGES: Final = (
    ("encode", "caller", "encode"),
    ("network", "callee", "network"),
    ("decode", "callee", "decode"),
    ("ASR", "callee", "asr"),
    ("translation", "callee", "translation"),
    ("TTS", "callee", "tts"),
    ("end of utterance → caption", "callee", "caption"),
    ("end of utterance → translation", "callee", "translated_caption"),
)

stderr = Console(stderr=True)


def render_captions(captions: CallerCaptions, languages: tuple[str, str]) -> Group:
    """The live view: the last finalized lines per language and the current partial line."""
    parts: list[Text] = []
    for language in dict.fromkeys(languages):
        finals = captions.finals.get(language, [])[-SHOWN_LINES:]
        for caption in finals:
            line = Text(f"[{language}] ", style="bold cyan" if language == languages[0] else "bold")
            line.append(caption.text)
            parts.append(line)
    partial = Text(f"[{languages[0]}…] ", style="dim")
    partial.append(captions.partial or "", style="italic")
    parts.append(partial)
    return Group(*parts)


def _ms(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 1000:.0f} ms"
    return "-"


def render_call_summary(summary: dict[str, object]) -> Table:
    """p50/p95 per stage from a caller's ``summary.json`` dict."""
    table = Table(title="call latency", title_justify="left")
    table.add_column("stage")
    table.add_column("measured by")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    caller = summary.get("caller_latency")
    callee = summary.get("callee")
    callee_latency = callee.get("latency") if isinstance(callee, dict) else None
    for label, side, stage in TABLE_STAGES:
        source = caller if side == "caller" else callee_latency
        entry = source.get(stage) if isinstance(source, dict) else None
        p50 = entry.get("p50_s") if isinstance(entry, dict) else None
        p95 = entry.get("p95_s") if isinstance(entry, dict) else None
        table.add_row(label, side, _ms(p50), _ms(p95))
    return table


def _caller_summary(
    outcome: CallOutcome,
    captions: CallerCaptions,
    *,
    peer: str,
    languages: tuple[str, str],
) -> dict[str, object]:
    return {
        "call_id": outcome.call_id,
        "peer": peer,
        "speaker_language": languages[0],
        "listener_language": languages[1],
        "audio_s": outcome.audio_s,
        "frames_sent": outcome.frames_sent,
        "paced": "real time" if outcome.paced == 1.0 else f"{outcome.paced:g}x real time",
        "caller_latency": {"encode": outcome.encode_latency.summary("encode")},
        "callee": outcome.callee_summary,
        "captions": {
            language: [caption.text for caption in finals]
            for language, finals in captions.finals.items()
        },
        "captions_rejected": captions.rejected,
    }


def call_command(
    peer: Annotated[
        str, typer.Argument(help="A trusted peer: name, id, or host:port:key.", show_default=False)
    ],
    *,
    input_path: Annotated[
        str, typer.Option("--in", help="Audio file to speak into the call.", show_default=False)
    ],
    lang: Annotated[
        str, typer.Option("--lang", help="The listener's language (e.g. pt).", show_default=False)
    ],
    from_language: Annotated[
        str | None,
        typer.Option("--from", help="Our language \\[default: call.language from config]."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder \\[default: ./parley-call-<id>/]."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """An encrypted call: our voice goes out as codec frames; captions come back live."""
    import trio

    from codec.config import CodecConfig
    from codec.model import new_model
    from daemon.calls import (
        CallerCaptions,
        CallError,
        CallModels,
        CallRequest,
        dial_peer,
        measure_voice,
        place_call,
    )
    from daemon.cli_support import EXIT_RUNTIME_FAILURE, fail, resolve_home
    from daemon.codec_store import CodecStore
    from daemon.config import load_config
    from daemon.database import PeerStore, open_database
    from daemon.discovery import StaticPeerError, parse_static_peer
    from daemon.identity import load_identity
    from daemon.node import CAPABILITIES
    from daemon.peers import PeerError, PeerTable, format_peer_id
    from handshake.noise import StaticIdentity
    from media.audio import load_audio
    from media.call_receiver import CallLimits
    from media.errors import MediaError
    from media.translate import TranslationError, language_key
    from schemas.messages import PROTOCOL_VERSION, Hello

    node_home = resolve_home(home)
    config = load_config(node_home.config_path)
    identity = load_identity(node_home.identity_path)
    speaker_language = from_language or config.call.language
    for tag in (speaker_language, lang):
        try:
            language_key(tag)
        except TranslationError as error:
            fail(str(error))

    # Who: a known peer, or host:port:key; either way it must be trusted.
    database = open_database(node_home.database_path)
    with database:
        table = PeerTable(PeerStore(database), ttl=1.0)
        addresses: tuple[tuple[str, int], ...]
        if peer.count(":") >= 2:
            try:
                static = parse_static_peer(peer)
            except StaticPeerError as error:
                fail(str(error))
            key = static.public_key
            record = table.get(key)
            addresses = ((static.host, static.port),)
            shown = record.name if record is not None and record.name else format_peer_id(key)[:16]
        else:
            try:
                record = table.resolve(peer)
            except PeerError as error:
                fail(f"unknown peer: {error}")
            key = record.public_key
            addresses = record.addresses
            shown = record.name or format_peer_id(key)[:16]
        if not table.is_trusted(key):
            fail(
                f"peer {shown} is not trusted: the callee decodes our voice with our codec, which "
                f"only goes to trusted peers; run 'parley peers trust {shown}' first"
            )
    if not addresses:
        fail(f"unreachable: no known address for peer {shown} (use host:port:key)")

    # What: the audio, our codec, our voice.
    if input_path == "mic":
        fail("live microphone input is not supported yet; pass --in FILE")
    try:
        audio = load_audio(Path(input_path).expanduser())
    except MediaError as error:
        fail(f"bad input file: {error}")
    store = CodecStore(node_home.models_dir, node_home.features_dir, CodecConfig())
    ours = store.current()
    if ours.checkpoint.metadata.get("source") == "init":
        stderr.print(
            "warning: our codec is untrained (never enrolled): the callee will hear noise; "
            "run 'parley enroll FILES' first",
            highlight=False,
        )
    model = new_model(ours.config, ours.checkpoint.state)
    models = CallModels.from_config(config, home_root=node_home.root)
    try:
        # The callee checks its own matrix too; refusing here saves a handshake and says why.
        models.language_matrix().check_speaker(speaker_language)
    except (CallError, MediaError) as error:
        fail(str(error))

    call_id = secrets.randbits(62)
    out_dir = out if out is not None else Path.cwd() / f"parley-call-{call_id}"
    languages = (speaker_language, lang)
    hello = Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=CAPABILITIES,
        codec_architecture=ours.config.architecture_id,
        codec_version_hash=ours.version_hash,
    )

    async def run() -> tuple[CallOutcome, CallerCaptions]:
        # Reachability first: a peer we cannot reach costs no Whisper run and leaves no files.
        session = await dial_peer(
            identity=StaticIdentity(identity.private_key),
            public_key=key,
            addresses=addresses,
            hello=hello,
            bundle=ours.bundle,
        )
        async with session:
            try:
                # The callee keeps an idle session for minutes; measuring takes seconds.
                voice = await trio.to_thread.run_sync(
                    lambda: measure_voice(audio, models.transcriber(speaker_language))
                )
            except (CallError, MediaError) as error:
                fail(str(error))
            out_dir.mkdir(parents=True, exist_ok=True)
            with Live(console=stderr, refresh_per_second=8, transient=False) as live:
                captions = CallerCaptions(
                    limits=CallLimits(),
                    out_base=out_dir / "call",
                    languages=languages,
                    on_update=lambda view: live.update(render_captions(view, languages)),
                )
                try:
                    outcome = await place_call(
                        session,
                        model=model,
                        version_hash=ours.version_hash,
                        audio=audio,
                        voice=voice,
                        request=CallRequest(
                            speaker_language=speaker_language,
                            listener_language=lang,
                            batch_ms=config.call.batch_ms,
                        ),
                        captions=captions,
                        call_id=call_id,
                    )
                finally:
                    captions.close()
        return outcome, captions

    try:
        outcome, captions = trio.run(run)
    except CallError as error:
        fail(str(error), exit_code=EXIT_RUNTIME_FAILURE)

    summary = _caller_summary(outcome, captions, peer=shown, languages=languages)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    console = Console()
    console.print(render_call_summary(summary))
    for path in [*captions.paths, summary_path]:
        print(path)
