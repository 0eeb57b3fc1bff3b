"""Hostile-peer scenarios against a real node, shared by the tests (short) and the bench (long).

:func:`run_hostile_cases` starts one node in the caller's trio run and plays every attack of
:mod:`simulations.reliability.hostile_peer` against it, each from its own loopback source address
(so the per-address rate limit of one case does not bleed into another), and after each one an
honest peer must still complete a handshake within :data:`HONEST_DEADLINE_S`. Each case
reports how many rejections the node counted under the case's reason code in ``status``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import trio

from daemon.database import PeerSource
from daemon.discovery import DiscoveredPeer
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.peers import format_peer_id
from handshake.handshake import TrustDecision
from handshake.noise import StaticIdentity
from handshake.stream import accept_session
from schemas.messages import CallStart, CodecSettings, Ping, VoiceTraits, WeightsBundle
from simulations.node_helpers import initiate_to, loopback_config, make_home
from simulations.reliability import hostile_peer

#: An honest peer must finish its handshake within this, whatever the attackers do.
HONEST_DEADLINE_S: Final = 1.0
#: The node's handshake deadline in these scenarios (slowloris is cut after this).
HANDSHAKE_TIMEOUT_S: Final = 0.5
REPO_ROOT: Final = Path(__file__).resolve().parents[2]


@dataclass(slots=True)
class CaseResult:
    rejected: int
    honest_peer_ok: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"rejected": self.rejected, "honest_peer_ok": self.honest_peer_ok, **self.detail}


@asynccontextmanager
async def hostile_target_node(root: Path, name: str = "target") -> AsyncIterator[RunningNode]:
    home, _ = make_home(root, name)
    config = loopback_config(name=name, mdns=False)
    config = config.replace("session", handshake_timeout_s=HANDSHAKE_TIMEOUT_S)
    # The most exposed setting: strangers complete handshakes, so the defences that apply
    # after one (frames, replays, bundles) are all reachable by the hostile cases.
    config = config.replace("trust", calls_from="anyone")
    async with open_node(home, config, NodeOptions(listen_port=0)) as node:
        yield node


def rejected(node: RunningNode, reason: str) -> int:
    return node.connections.stats.rejected.get(reason, 0)


async def honest_handshake(node: RunningNode, identity: StaticIdentity | None = None) -> bool:
    """An honest peer from 127.0.0.1: True if its handshake and a ping finish in time.

    Without ``identity``, a new peer the node trusts (the default ``trust.calls_from``
    refuses strangers at the handshake).
    """
    if identity is None:
        identity = StaticIdentity.generate()
        node.peers.observe(identity.public, name=None, address=None, source=PeerSource.STATIC)
        node.peers.trust(identity.public.hex())
    try:
        with trio.fail_after(HONEST_DEADLINE_S):
            stream = await hostile_peer.open_tcp("127.0.0.1", node.listen_port)
            session = await initiate_to(node, identity, stream)
            async with session:
                await session.send_message(Ping(nonce=1))
                return True
    except (trio.TooSlowError, trio.BrokenResourceError, OSError):
        return False


def call_start_on_our_codec(node: RunningNode, call_id: int) -> CallStart:
    """An English-to-English ``CallStart`` on ``node``'s own codec (a caller holding its
    bundle), with an ordinary voice."""
    ours = node.codecs.current()
    codec = ours.config
    return CallStart(
        call_id=call_id,
        speaker_language="en",
        listener_language="en",
        codec=CodecSettings(
            architecture_id=codec.architecture_id,
            codec_version_hash=ours.bundle.content_hash,
            latent_dim=codec.latent_dim,
            latent_bits=codec.latent_bits,
            frame_rate_hz=codec.frame_rate_hz,
        ),
        voice=VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5),
    )


async def _wait_count(node: RunningNode, reason: str, at_least: int, limit_s: float = 5.0) -> int:
    with trio.move_on_after(limit_s):
        while rejected(node, reason) < at_least:
            await trio.sleep(0.02)
    return rejected(node, reason)


async def _stranger_session(
    node: RunningNode, source: str, bundle: WeightsBundle | None = None
) -> hostile_peer.RawSession:
    """A completed handshake with ``node`` from ``source`` by a new identity it never saw."""
    return await hostile_peer.handshake(
        "127.0.0.1",
        node.listen_port,
        identity=StaticIdentity.generate(),
        responder_key=node.identity.public_key,
        hello=node.hello(),
        bundle=bundle,
        source=source,
    )


async def _refusal(
    node: RunningNode, stream: trio.SocketStream, reason: str, before: int, limit_s: float = 5
) -> tuple[int, bool, bytes]:
    """After an attack on ``stream``: wait for the node to close it, close our end, and wait
    for the node to count one more ``reason`` rejection than ``before``. Returns how many it
    counted since ``before``, whether it closed the stream, and what it sent first."""
    closed, answer = await hostile_peer.read_until_closed(stream, limit_s=limit_s)
    await trio.aclose_forcefully(stream)
    return await _wait_count(node, reason, before + 1) - before, closed, answer


async def _case_result(node: RunningNode, count: int, detail: dict[str, Any]) -> CaseResult:
    """The case's count, with an honest handshake tried after the attack."""
    return CaseResult(count, await honest_handshake(node), detail)


async def case_oversized_message1(node: RunningNode, source: str) -> CaseResult:
    before = rejected(node, "oversized_frame")
    stream = await hostile_peer.open_tcp("127.0.0.1", node.listen_port, source=source)
    # A length prefix of 65535 for message 1, and a few bytes of body: refused on the prefix.
    await stream.send_all(b"\xff\xff" + b"\x00" * 16)
    count, closed, answer = await _refusal(node, stream, "oversized_frame", before)
    return await _case_result(node, count, {"closed": closed, "answered": len(answer)})


async def case_oversized_transport_frame(node: RunningNode, source: str) -> CaseResult:
    before = rejected(node, "tampered")
    raw = await _stranger_session(node, source)
    await raw.stream.send_all(b"\xff\xff" + os.urandom(65535) + b"\xff\xff" + os.urandom(4000))
    count, closed, _ = await _refusal(node, raw.stream, "tampered", before)
    return await _case_result(node, count, {"closed": closed})


async def case_slowloris(node: RunningNode, source: str, *, connections: int) -> CaseResult:
    """Half-open handshakes held open: one byte of message 1, or message 1 and then silence.

    All from one address, so beyond the rate limit's burst they are refused at the door
    (``rate_limited``); the others time out (``handshake_timeout``). Both count.
    """
    timeouts_before = rejected(node, "handshake_timeout")
    limited_before = rejected(node, "rate_limited")
    streams = []
    for index in range(connections):
        stream = await hostile_peer.open_tcp("127.0.0.1", node.listen_port, source=source)
        if index % 2:
            await stream.send_all(hostile_peer.message1(node.identity.public_key))
        else:
            await stream.send_all(b"\x00")
        streams.append(stream)
    # While they hang, honest peers still get through (a slot each at most, and only briefly).
    honest = await honest_handshake(node)
    closed = 0
    for stream in streams:
        done, _ = await hostile_peer.read_until_closed(stream, limit_s=HANDSHAKE_TIMEOUT_S * 8)
        closed += done
        await trio.aclose_forcefully(stream)
    with trio.move_on_after(5):
        while (
            rejected(node, "handshake_timeout")
            - timeouts_before
            + rejected(node, "rate_limited")
            - limited_before
        ) < connections:
            await trio.sleep(0.02)
    timed_out = rejected(node, "handshake_timeout") - timeouts_before
    limited = rejected(node, "rate_limited") - limited_before
    return CaseResult(
        timed_out + limited,
        honest and await honest_handshake(node),
        {"closed": closed, "timed_out": timed_out, "rate_limited": limited},
    )


async def case_replayed_message1(node: RunningNode, source: str) -> CaseResult:
    before = rejected(node, "replayed_msg1")
    recorded = hostile_peer.message1(node.identity.public_key)
    first = await hostile_peer.open_tcp("127.0.0.1", node.listen_port, source=source)
    await first.send_all(recorded)
    reply = await first.receive_some(65536)  # message 2: the original was accepted
    replay = await hostile_peer.open_tcp("127.0.0.1", node.listen_port, source=source)
    await replay.send_all(recorded)
    closed, answer = await hostile_peer.read_until_closed(replay, limit_s=5)
    for stream in (first, replay):
        await trio.aclose_forcefully(stream)
    count = await _wait_count(node, "replayed_msg1", before + 1) - before
    return CaseResult(
        count,
        await honest_handshake(node),
        {"original_answered": bool(reply), "replay_answered": len(answer), "closed": closed},
    )


async def case_garbage_message1(node: RunningNode, source: str) -> CaseResult:
    before = rejected(node, "auth_failed")
    stream = await hostile_peer.open_tcp("127.0.0.1", node.listen_port, source=source)
    body = os.urandom(120)
    await stream.send_all(len(body).to_bytes(2, "big") + body)
    count, closed, _ = await _refusal(node, stream, "auth_failed", before)
    return await _case_result(node, count, {"closed": closed})


async def case_tampered(node: RunningNode, source: str) -> CaseResult:
    before = rejected(node, "tampered")
    raw = await _stranger_session(node, source)
    await raw.stream.send_all(hostile_peer.tamper(raw.session.send(Ping(nonce=7))))
    count, closed, _ = await _refusal(node, raw.stream, "tampered", before)
    return await _case_result(node, count, {"closed": closed})


async def case_oversized_caption(node: RunningNode, source: str) -> CaseResult:
    """A Caption with 1 MB of text, chunked by an authenticated peer: refused at decoding."""
    before = rejected(node, "protocol_error")
    raw = await _stranger_session(node, source)
    payload = hostile_peer.oversized_caption_envelope(1_000_000)
    await raw.stream.send_all(hostile_peer.seal_chunked(raw.session, payload))
    count, closed, _ = await _refusal(node, raw.stream, "protocol_error", before, limit_s=10)
    return await _case_result(node, count, {"closed": closed, "payload_bytes": len(payload)})


async def case_untrusted_bundle(node: RunningNode, source: str) -> CaseResult:
    before = rejected(node, "bundle_from_untrusted_peer")
    raw = await _stranger_session(node, source, bundle=node.codecs.current().bundle)
    got_weights = raw.their_bundle is not None
    await raw.stream.send_all(raw.session.close())
    await trio.aclose_forcefully(raw.stream)
    count = await _wait_count(node, "bundle_from_untrusted_peer", before + 1) - before
    return await _case_result(node, count, {"got_weights": got_weights})


async def case_flood(node: RunningNode, *, rate: float, seconds: float) -> CaseResult:
    """message-1 flood from 127.0.0.2 (a separate process) while honest peers connect."""
    before = rejected(node, "rate_limited")
    command = [
        sys.executable,
        "-m",
        "simulations.reliability.hostile_peer",
        "flood",
        "--host",
        "127.0.0.1",
        "--port",
        str(node.listen_port),
        "--source",
        "127.0.0.2",
        "--key",
        node.identity.public_key.hex(),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
    ]
    honest: list[bool] = []
    outputs: list[bytes] = []

    async def run_flood() -> None:
        done = await trio.run_process(command, cwd=REPO_ROOT, capture_stdout=True)
        outputs.append(done.stdout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_flood)
        await trio.sleep(min(1.0, seconds / 4))  # the flood is under way (interpreter start)
        while not outputs:
            honest.append(await honest_handshake(node))
            await trio.sleep(0.25)
    output = outputs[0]
    report = json.loads(output)
    connections = int(report["connections"])
    # At most the bucket's burst plus its refill may pass; everything else is refused.
    limit = node.config.session.handshakes_per_address_per_s
    allowed = math.ceil(2 * limit + limit * float(report["seconds"]))
    count = rejected(node, "rate_limited") - before
    return CaseResult(
        count,
        bool(honest) and all(honest) and await honest_handshake(node),
        {
            "flood_connections": connections,
            "flood_seconds": report["seconds"],
            "allowed_at_most": allowed,
            "honest_handshakes": len(honest),
        },
    )


# -- poisoned bundles from a trusted peer (outbound, so the round record shows them) ------------


@asynccontextmanager
async def hostile_responders(
    node: RunningNode, bundles: Mapping[str, WeightsBundle]
) -> AsyncIterator[dict[str, StaticIdentity]]:
    """One trusted peer per bundle, each answering the node's handshake with its bundle."""
    identities = {name: StaticIdentity.generate() for name in bundles}
    async with trio.open_nursery() as nursery:
        for name, bundle in bundles.items():
            identity = identities[name]

            async def serve(
                stream: trio.SocketStream,
                identity: StaticIdentity = identity,
                bundle: WeightsBundle = bundle,
            ) -> None:
                try:
                    session = await accept_session(
                        stream,
                        identity=identity,
                        our_hello=node.hello(),
                        our_bundle=bundle,
                        trust_check=lambda _key: TrustDecision.TRUSTED,
                    )
                except trio.BrokenResourceError:
                    return
                async with session:
                    with trio.move_on_after(5):
                        await session.receive_message()

            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            node.observe(
                DiscoveredPeer(
                    identity.public, f"evil-{name}", "127.0.0.1", port, PeerSource.STATIC
                )
            )
            node.peers.trust(identity.public.hex())
        yield identities
        nursery.cancel_scope.cancel()


def _flat(state: Mapping[str, Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.concatenate(
        [np.asarray(state[name], dtype=np.float64).ravel() for name in sorted(state)]
    )


async def case_poisoned_bundles(node: RunningNode) -> dict[str, CaseResult]:
    """NaN, Inf, a wrong architecture and a huge norm, each from its own trusted peer."""
    ours = node.codecs.current()
    state = ours.checkpoint.state
    architecture = ours.config.architecture_id
    bundles = {
        "nan": hostile_peer.bundle_with_value(state, architecture, math.nan),
        "inf": hostile_peer.bundle_with_value(state, architecture, math.inf),
        "wrong_architecture": hostile_peer.wrong_architecture_bundle(state),
        "huge_norm": hostile_peer.huge_norm_bundle(state, architecture),
    }
    async with hostile_responders(node, bundles) as identities:
        record = await node.scheduler.run_round()
    after = node.codecs.current().checkpoint.state
    report: dict[str, Any] = dict(record.record)
    by_peer = {item["peer_id"]: item["reason"] for item in report.get("rejected", [])}
    moved = float(np.linalg.norm(_flat(after) - _flat(state)))
    bound = (1 - float(report["alpha"])) * float(report["clip_bound"])
    finite = bool(np.isfinite(_flat(after)).all())
    results: dict[str, CaseResult] = {}
    for name, identity in identities.items():
        reason = by_peer.get(format_peer_id(identity.public))
        results[name] = CaseResult(
            int(reason is not None),
            True,
            {"reason": reason, "round_status": record.status.value},
        )
    participants = {item["peer_id"]: item for item in report.get("participants", [])}
    huge_id = format_peer_id(identities["huge_norm"].public)
    huge = participants.get(huge_id, {})
    clipped = bool(huge) and huge["clipped_norm"] < huge["update_norm"]
    # Issue #11: a clipped update whose round would inflate our model is left out instead.
    left_out = huge_id in (report.get("left_out_for_loss") or [])
    results["huge_norm"] = CaseResult(
        int(clipped or left_out),
        True,
        {
            "clipped": clipped,
            "left_out": left_out,
            "model_finite": finite,
            "moved": moved,
            "move_bound": bound,
            "round_status": record.status.value,
        },
    )
    for result in results.values():
        result.detail["model_finite"] = finite
        result.detail["moved_within_bound"] = moved <= bound * (1 + 1e-4) + 1e-6
    return results


async def run_hostile_cases(
    root: Path, *, flood_rate: float = 1000.0, flood_seconds: float = 2.0, slowloris: int = 4
) -> tuple[dict[str, CaseResult], dict[str, int]]:
    """Every hostile case against one node: each case's result, and the node's rejection
    counters by reason at the end (what ``parley status`` shows)."""
    async with hostile_target_node(root) as node:
        results: dict[str, CaseResult] = {
            "oversized_frame": await case_oversized_message1(node, "127.0.0.3"),
            "oversized_transport_frame": await case_oversized_transport_frame(node, "127.0.0.4"),
            "handshake_timeout": await case_slowloris(node, "127.0.0.5", connections=slowloris),
            "replayed_msg1": await case_replayed_message1(node, "127.0.0.6"),
            "garbage_msg1": await case_garbage_message1(node, "127.0.0.7"),
            "tampered": await case_tampered(node, "127.0.0.8"),
            "bundle_from_untrusted_peer": await case_untrusted_bundle(node, "127.0.0.9"),
            "oversized_caption": await case_oversized_caption(node, "127.0.0.10"),
            "rate_limited": await case_flood(node, rate=flood_rate, seconds=flood_seconds),
        }
        for name, result in (await case_poisoned_bundles(node)).items():
            results[f"bundle_{name}"] = result
        counted = dict(node.connections.stats.rejected)
    return results, counted
