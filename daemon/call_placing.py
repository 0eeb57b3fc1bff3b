"""Calls the node places for its user (``parley call`` with a node running: RPC ``call.place``).

The node dials the peer with its own identity, codec and peer table, and holds the call in its
own nursery (:func:`start_call`), so the call outlives the RPC request that asked for it: the
CLI polls ``call.list`` for captions and state and asks ``call.hangup`` on Ctrl-C. Our audio is
``call.input`` or the request's input (a microphone or a recording the node can read); the
other side's speech is written to the call's folder (and played, see daemon.call_audio).
Files: ``<home>/calls/<id>/`` holds ``call.<lang>.*`` (their speech, both languages),
``received.<lang>.wav``, ``ours.<lang>.*`` (our speech as they captioned it) and
``summary.json``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from codec.model import new_model
from common.atomic import write_atomic
from daemon.call_audio import MicSource, Playout, open_input, open_output
from daemon.call_dialing import (
    CallOutcome,
    CallRequest,
    ListenSettings,
    dial_peer,
    place_call,
)
from daemon.call_errors import CallError
from daemon.call_registry import LiveCall
from daemon.call_session import AudioSource
from daemon.call_view import CallerCaptions
from daemon.calls import CallRecord, CallService, new_call_dir
from daemon.discovery import StaticPeerError, parse_static_peer
from daemon.logs import event, get_logger
from daemon.peers import PeerError, format_peer_id
from handshake.noise import StaticIdentity
from media.call_protocol import (
    CallEndReason,
    CallProtocol,
    CallRole,
    CallSummary,
    CallTimeouts,
)
from media.echo import EchoCanceller
from media.errors import MediaError
from media.translate import TranslationError, language_key
from schemas.messages import VoiceTraits

if TYPE_CHECKING:
    from daemon.call_node import CallNode
    from daemon.peers import PeerTable

__all__ = ["PlaceRequest", "PlacedPeer", "resolve_callee", "start_call"]

log = get_logger("calls")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceRequest:
    """What ``call.place`` asks for (validated by :meth:`check`)."""

    peer: str
    #: The peer's language (what it hears); our language is ``speaker_language``.
    listener_language: str
    speaker_language: str
    #: ``mic``, ``mic:NAME``, ``none`` or a recording (an absolute path the node can read).
    input: str

    def check(self) -> None:
        for tag in (self.speaker_language, self.listener_language):
            try:
                language_key(tag)
            except TranslationError as error:
                raise CallError(str(error)) from error


@dataclass(frozen=True, slots=True)
class PlacedPeer:
    key: bytes
    addresses: tuple[tuple[str, int], ...]
    shown: str


def resolve_callee(node_peers: PeerTable, peer: str) -> PlacedPeer:
    """A trusted peer by name, id or ``host:port:key`` (blocking: reads the peer table)."""
    if peer.count(":") >= 2:
        try:
            static = parse_static_peer(peer)
        except StaticPeerError as error:
            raise CallError(str(error)) from error
        key = static.public_key
        record = node_peers.get(key)
        addresses: tuple[tuple[str, int], ...] = ((static.host, static.port),)
        shown = record.name if record is not None and record.name else format_peer_id(key)[:16]
    else:
        try:
            record = node_peers.resolve(peer)
        except PeerError as error:
            raise CallError(f"unknown peer: {error}") from error
        key, proven = record.public_key, record.addresses
        # Addresses mDNS announced but no handshake proved yet come after the proven ones.
        candidates = node_peers.candidate_addresses(key)
        addresses = (*proven, *(item for item in candidates if item not in proven))
        shown = record.name or format_peer_id(key)[:16]
    if not node_peers.is_trusted(key):
        raise CallError(
            f"peer {shown} is not trusted: the callee decodes our voice with our codec, which "
            f"only goes to trusted peers; run 'parley peers trust {shown}' first"
        )
    if not addresses:
        raise CallError(f"unreachable: no known address for peer {shown} (use host:port:key)")
    return PlacedPeer(key, addresses, shown)


async def start_call(
    nursery: trio.Nursery, node: CallNode, service: CallService, request: PlaceRequest
) -> LiveCall:
    """Check ``request``, open our audio and start the call in ``nursery``; return its handle.

    Raises :class:`CallError` / :class:`MediaError` (one line) for what can be refused at once:
    an unknown or untrusted peer, a bad language, a missing device or file.
    """
    request.check()
    callee = await trio.to_thread.run_sync(resolve_callee, node.peers, request.peer)
    config = node.config.call
    is_mic = request.input.startswith("mic")
    canceller = (
        EchoCanceller()
        if config.echo_cancellation and is_mic and config.output.startswith("speaker")
        else None
    )
    source, voice = await open_input(
        request.input,
        batch_ms=config.batch_ms,
        transcriber=lambda: service.models.transcriber(request.speaker_language),
        canceller=canceller,
    )
    if source is None:
        raise CallError("a call needs our audio: --in mic or a recording, not none")
    # A recording is a scripted call: its far end goes to the call's folder only.
    playout = await open_output(config.output if is_mic else "none", canceller=canceller)
    call_id = secrets.randbits(62)
    protocol = CallProtocol(
        role=CallRole.CALLER,
        clock=time.monotonic,
        timeouts=CallTimeouts(
            ring_s=service.ring_timeout_s * 2, max_duration_s=service.max_duration_s
        ),
    )
    live = LiveCall(
        call_id=call_id,
        peer=callee.shown,
        role=CallRole.CALLER,
        protocol=protocol,
        our_language=request.speaker_language,
        their_language=request.listener_language,
    )
    live.call_dir = new_call_dir(service, call_id)
    if playout is not None:
        live.playout = playout
    if isinstance(source, MicSource):
        source.on_level = lambda level: setattr(live, "input_level_db", round(level, 1))
    service.live.add(live)

    async def hold() -> None:
        try:
            await _hold(
                node=node,
                service=service,
                live=live,
                callee=callee,
                request=request,
                ours_audio=_Ours(source, voice, playout),
            )
        except (CallError, MediaError, OSError) as error:
            _finish(service, live, None, str(error))
        except BaseException:
            _finish(service, live, None, "the node stopped")
            raise
        finally:
            if playout is not None:
                await trio.to_thread.run_sync(playout.close)

    nursery.start_soon(hold)
    return live


@dataclass(frozen=True, slots=True)
class _Ours:
    source: AudioSource
    voice: VoiceTraits
    playout: Playout | None


async def _hold(
    *,
    node: CallNode,
    service: CallService,
    live: LiveCall,
    callee: PlacedPeer,
    request: PlaceRequest,
    ours_audio: _Ours,
) -> None:
    assert live.call_dir is not None
    ours = node.codecs.current()
    model = new_model(ours.config, ours.checkpoint.state)
    session = await dial_peer(
        identity=StaticIdentity(node.identity.private_key),
        public_key=callee.key,
        addresses=callee.addresses,
        hello=node.hello(),
        bundle=ours.bundle,
    )
    captions = CallerCaptions(
        limits=service.limits,
        out_base=live.call_dir / "ours",
        languages=(request.speaker_language, request.listener_language),
        on_update=lambda view: live.add_captions("ours", view.all[-1:]),
    )
    service.active_dirs.add(live.call_dir)
    try:
        async with session:
            outcome = await place_call(
                session,
                model=model,
                version_hash=ours.version_hash,
                audio=None,
                source=ours_audio.source,
                voice=ours_audio.voice,
                request=CallRequest(
                    speaker_language=request.speaker_language,
                    listener_language=request.listener_language,
                    batch_ms=node.config.call.batch_ms,
                ),
                captions=captions,
                call_id=live.call_id,
                listen=ListenSettings(
                    models=service.models,
                    call_dir=live.call_dir,
                    limits=service.limits,
                    on_captions=lambda made: live.add_captions("theirs", made),
                    playout=ours_audio.playout,
                    recognizer=service.recognizer,
                    speech=service.speech,
                    max_speech_delay_s=service.max_speech_delay_s,
                ),
                hang_up=live.hang_up,
                protocol=live.protocol,
            )
    finally:
        captions.close()
        service.active_dirs.discard(live.call_dir)
    _finish(service, live, outcome, "")


def _finish(
    service: CallService, live: LiveCall, outcome: CallOutcome | None, failure: str
) -> None:
    if live.summary is not None and outcome is None and not failure:
        return
    summary = live.protocol.summary
    if summary is None:
        summary = CallSummary(
            call_id=live.call_id,
            role=CallRole.CALLER,
            reason=CallEndReason.FAILURE,
            detail=failure,
            ended_by_us=True,
            answered=False,
            ring_s=None,
            duration_s=0.0,
            frames_sent=0,
            frames_received=0,
            captions_sent=0,
            captions_received=0,
            their_summary_json="",
        )
    live.summary = summary
    live.reason = failure or summary.reason.value
    figures: dict[str, object] = {
        "call_id": live.call_id,
        "peer": live.peer,
        "role": "caller",
        "end_reason": summary.reason.value,
        "end_detail": failure or summary.detail,
        "duration_s": summary.duration_s,
        "ours": {"language": live.our_language},
        "theirs": {"language": live.their_language},
    }
    if live.playout is not None:
        figures["playout"] = live.playout.figures()
    if outcome is not None:
        figures["listener"] = outcome.listener_summary
        figures["callee"] = outcome.callee_summary
        figures["audio_s_sent"] = outcome.audio_s
    if live.call_dir is not None:
        try:
            write_atomic(
                live.call_dir / "summary.json",
                json.dumps(figures, indent=2).encode(),
                mode=0o600,
            )
        except OSError as error:
            event(log, logging.WARNING, "call.summary_not_written", reason=str(error))
    service.record(
        CallRecord(
            live.call_id,
            live.peer,
            live.call_dir,
            live.reason,
            figures,
            summary.reason,
            failure or summary.detail,
            summary,
        )
    )
