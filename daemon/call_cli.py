"""``parley call PEER --lang pt [--in mic|FILE] [--from en] [--out DIR]``: a two-way call.

With a node running on this home, the node places and holds the call (RPC ``call.place``,
:mod:`daemon.call_placing`): this command shows both sides' captions as they come (polling
``call.list``), Ctrl-C hangs up (``call.hangup``) and the summary is printed; the files stay in
the node's ``calls/<id>/`` and are copied to ``--out`` when it is given. Without a running node
(or with ``--local``) the call is placed from this process with the home's identity, peer table
and codec, as before. The peer is a known peer's name or id, or ``host:port:key``; it must be
trusted, because the callee decodes our voice with our codec and our codec bundle only goes to
trusted peers. ``parley calls``, ``parley answer ID`` and ``parley hangup ID`` act on the calls
the running node rings or holds (``call.answer = "ask"`` makes every call ring).

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
import shutil
import time
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

__all__ = [
    "answer_command",
    "call_command",
    "calls_command",
    "hangup_command",
    "render_call_summary",
    "render_captions",
]

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
        "end_reason": outcome.summary.reason.value if outcome.summary is not None else None,
        # Two-way: what we made of the callee's speech (None when it did not speak to us).
        "heard": outcome.listener_summary,
        "not_listening": outcome.not_listening or None,
    }


def call_command(
    peer: Annotated[
        str, typer.Argument(help="A trusted peer: name, id, or host:port:key.", show_default=False)
    ],
    *,
    input_path: Annotated[
        str,
        typer.Option(
            "--in", help="Our audio: mic, mic:NAME|INDEX (see 'parley devices') or an audio file."
        ),
    ] = "mic",
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
    local: Annotated[
        bool,
        typer.Option("--local", help="Place the call from this process even if a node runs."),
    ] = False,
    home: HomeOption = None,
) -> None:
    """A two-way encrypted call: our voice goes out as codec frames, theirs comes back
    translated; both sides' captions live."""
    import trio

    from daemon.cli_support import resolve_home as _resolve_home

    if not local:
        spec = input_path
        if spec not in ("mic", "none") and not spec.startswith("mic:"):
            spec = str(Path(spec).expanduser().resolve())
        if _call_through_node(
            _resolve_home(home), peer, spec=spec, lang=lang, from_language=from_language, out=out
        ):
            return

    from codec.config import CodecConfig
    from codec.model import new_model
    from daemon.calls import (
        CallerCaptions,
        CallError,
        CallModels,
        CallRequest,
        ListenSettings,
        dial_peer,
        measure_voice,
        place_call,
    )
    from daemon.candidates import CANDIDATES_FILE_NAME, CandidateStore
    from daemon.cli_support import EXIT_RUNTIME_FAILURE, fail, resolve_home
    from daemon.codec_store import CodecStore
    from daemon.config import load_config
    from daemon.database import PeerStore, open_database
    from daemon.discovery import StaticPeerError, parse_static_peer
    from daemon.identity import load_identity
    from daemon.node import CAPABILITIES
    from daemon.peers import PeerError, PeerTable, format_peer_id, prove_candidate
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
        candidates_path = node_home.root / CANDIDATES_FILE_NAME
        table = PeerTable(
            PeerStore(database), ttl=1.0, candidates=CandidateStore.open(candidates_path)
        )
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
        # Endpoints announced but not yet proven come after the static/proven addresses.
        candidates = table.candidate_addresses(key)
        if not table.is_trusted(key):
            fail(
                f"peer {shown} is not trusted: the callee decodes our voice with our codec, which "
                f"only goes to trusted peers; run 'parley peers trust {shown}' first"
            )
    if not addresses and not candidates:
        fail(f"unreachable: no known address for peer {shown} (use host:port:key)")

    # What: the audio, our codec, our voice.
    if input_path == "mic" or input_path.startswith("mic:"):
        fail(
            "live microphone calls are held by the node: start 'parley node' on this home "
            "(or pass --in FILE)"
        )
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
            addresses=(*addresses, *(item for item in candidates if item not in addresses)),
            hello=hello,
            bundle=ours.bundle,
        )
        reached = session.remote_address
        if reached is not None and reached in candidates:  # proven by the handshake
            await trio.to_thread.run_sync(
                prove_candidate, node_home.database_path, candidates_path, key, reached
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
                        # Two-way: when the callee trusts us and speaks, we hear it too
                        # (its speech and captions go to --out; see the listener files).
                        listen=ListenSettings(
                            models=models, call_dir=out_dir / "received", limits=CallLimits()
                        ),
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
    for path in [*captions.paths, summary_path, *outcome.listener_files]:
        print(path)


# -- calls held by the running node ----------------------------------------------------------

#: How often the live view polls the node.
POLL_S: Final = 0.25


def _rpc(home_socket: Path, method: str, params: dict[str, object]) -> object:
    from daemon.cli_support import fail
    from daemon.rpc_client import RpcCallError, RpcClientError, call_sync

    try:
        return call_sync(home_socket, method, params)
    except RpcCallError as error:
        fail(f"{method}: {error.error.message}")
    except RpcClientError as error:
        fail(f"{method}: {error}")


def _call_through_node(
    node_home: object,
    peer: str,
    *,
    spec: str,
    lang: str,
    from_language: str | None,
    out: Path | None,
) -> bool:
    """Ask the running node to place the call and follow it; False when no node runs."""
    from daemon.cli_support import EXIT_RUNTIME_FAILURE, fail
    from daemon.home import NodeHome
    from daemon.rpc_client import RpcCallError, RpcClientError, RpcUnavailableError, call_sync

    assert isinstance(node_home, NodeHome)
    params: dict[str, object] = {"peer": peer, "lang": lang, "in": spec}
    if from_language:
        params["from"] = from_language
    try:
        placed = call_sync(node_home.socket_path, "call.place", params, timeout=60.0)
    except RpcUnavailableError:
        return False
    except RpcCallError as error:
        if error.code == "method_not_found":
            return False  # an older node: place the call from here
        fail(error.error.message)
    except RpcClientError as error:
        fail(f"call: {error}")
    if not isinstance(placed, dict) or not isinstance(placed.get("call_id"), int):
        fail("call: the node answered call.place with something that is not a call")
    call_id = placed["call_id"]
    view = LiveView()
    hung_up = False
    with Live(console=stderr, refresh_per_second=8, transient=False) as live:
        while True:
            try:
                listed = _rpc(
                    node_home.socket_path, "call.list", {"call_id": call_id, "since": view.since}
                )
                assert isinstance(listed, list) and listed and isinstance(listed[0], dict)
                call = listed[0]
                view.update(call)
                live.update(view.render())
                if call.get("ended") is not None:
                    break
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                if hung_up:
                    fail("call: interrupted twice; the node ends the call on its own")
                hung_up = True
                stderr.print("hanging up…", highlight=False)
                _rpc(node_home.socket_path, "call.hangup", {"call_id": call_id})
    ended = call["ended"]
    assert isinstance(ended, dict)
    folder = call.get("folder")
    stderr.print(
        f"call {call_id} with {call.get('peer')} ended: {ended.get('reason')}"
        + (f" ({ended.get('detail')})" if ended.get("detail") else "")
        + f", {float(ended.get('duration_s') or 0.0):.1f} s"
        + _playout_line(call),
        highlight=False,
    )
    paths = sorted(Path(str(folder)).iterdir()) if isinstance(folder, str) else []
    if out is not None and paths:
        out.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copyfile(path, out / path.name)
        paths = sorted(out / path.name for path in paths)
    for path in paths:
        print(path)
    if ended.get("reason") not in ("hangup", "completed"):
        raise typer.Exit(EXIT_RUNTIME_FAILURE)
    return True


def _playout_line(call: dict[str, object]) -> str:
    """``, underruns N (device M)`` when our speaker played the call (``call.list``)."""
    underruns, device = call.get("underruns"), call.get("device_underruns")
    if not isinstance(underruns, int):
        return ""
    return f", underruns {underruns}" + (f" (device {device})" if isinstance(device, int) else "")


class LiveView:
    """Both sides' captions (finished lines and the live partial) from ``call.list`` polls."""

    def __init__(self) -> None:
        self.since = 0
        self.state = ""
        self.peer = ""
        self.languages: dict[str, str] = {}
        self.finals: list[tuple[str, str, str]] = []
        self.partial: dict[str, str] = {"ours": "", "theirs": ""}
        self.level: float | None = None
        self.mouth_to_ear: float | None = None

    def update(self, call: dict[str, object]) -> None:
        self.state = str(call.get("state"))
        self.peer = str(call.get("peer"))
        languages = call.get("languages")
        if isinstance(languages, dict):
            self.languages = {str(k): str(v) for k, v in languages.items()}
        level, delay = call.get("input_level_db"), call.get("mouth_to_ear_s")
        self.level = float(level) if isinstance(level, int | float) else None
        self.mouth_to_ear = float(delay) if isinstance(delay, int | float) else None
        captions = call.get("captions")
        for line in captions if isinstance(captions, list) else []:
            if not isinstance(line, dict):
                continue
            self.since = max(self.since, int(line.get("index", 0)))
            side, text = str(line.get("side")), str(line.get("text"))
            if line.get("final"):
                self.finals.append((side, str(line.get("language")), text))
                if line.get("language") == self._speaker_language(side):
                    self.partial[side] = ""
            else:
                self.partial[side] = text

    def _speaker_language(self, side: str) -> str:
        return self.languages.get("ours" if side == "ours" else "theirs", "")

    def render(self) -> Group:
        head = Text(f"{self.state} with {self.peer}", style="bold")
        if self.level is not None:
            head.append(f"  mic {self.level:5.1f} dBFS", style="dim")
        if self.mouth_to_ear is not None:
            head.append(f"  mouth-to-ear {self.mouth_to_ear:.2f} s", style="dim")
        parts: list[Text] = [head]
        for side, language, text in self.finals[-2 * SHOWN_LINES :]:
            who = "you" if side == "ours" else "them"
            line = Text(f"[{who} {language}] ", style="bold cyan" if side == "ours" else "bold")
            line.append(text)
            parts.append(line)
        for side in ("ours", "theirs"):
            if self.partial[side]:
                who = "you" if side == "ours" else "them"
                line = Text(f"[{who}…] ", style="dim")
                line.append(self.partial[side], style="italic")
                parts.append(line)
        return Group(*parts)


def calls_command(home: HomeOption = None) -> None:
    """The calls the running node rings or holds now."""
    from daemon.cli_support import resolve_home

    listed = _rpc(resolve_home(home).socket_path, "call.list", {})
    rows = listed if isinstance(listed, list) else []
    if not rows:
        print("no calls")
        return
    table = Table()
    for column in ("id", "peer", "role", "state", "languages", "since"):
        table.add_column(column)
    for call in rows:
        if not isinstance(call, dict):
            continue
        languages = call.get("languages")
        pair = (
            f"{languages.get('ours')}↔{languages.get('theirs')}"
            if isinstance(languages, dict)
            else "-"
        )
        started = call.get("started_at")
        since = (
            time.strftime("%H:%M:%S", time.localtime(float(started)))
            if isinstance(started, int | float)
            else "-"
        )
        table.add_row(
            str(call.get("call_id")),
            str(call.get("peer")),
            str(call.get("role")),
            str(call.get("state")),
            pair,
            since,
        )
    Console().print(table)


CallIdArgument = Annotated[int, typer.Argument(help="The call's id (see 'parley calls').")]


def answer_command(call_id: CallIdArgument, home: HomeOption = None) -> None:
    """Answer a ringing call (config call.answer = "ask")."""
    from daemon.cli_support import resolve_home

    call = _rpc(resolve_home(home).socket_path, "call.answer", {"call_id": call_id})
    peer = call.get("peer") if isinstance(call, dict) else "?"
    print(f"answered call {call_id} from {peer}")


def hangup_command(call_id: CallIdArgument, home: HomeOption = None) -> None:
    """Hang up a call the node holds, or decline one that rings."""
    from daemon.cli_support import resolve_home

    _rpc(resolve_home(home).socket_path, "call.hangup", {"call_id": call_id})
    print(f"hanging up call {call_id}")
