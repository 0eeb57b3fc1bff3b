"""Calls held by the nodes, asked for over the RPC (issue 14): place, ring, answer, hang up.

Two real nodes on loopback with their RPC sockets. The caller's node places each call itself
(``call.place``, as ``parley call`` does when a node runs); the callee's node has
``call.answer = "ask"``, so every call rings: it shows in ``call.list`` and in ``status``, and
``call.answer`` / ``call.hangup`` act on it, or the ring times out. Oracles: the typed end
reason each side records, and the answered call's captions against the script.
"""

from __future__ import annotations

import trio

from daemon.rpc_client import RpcCallError, call
from media.call_protocol import AnswerPolicy, CallEndReason
from media.wer import wer
from simulations.bench_call import (
    SCRIPT_SENTENCES,
    open_call_pair,
    prepare_one_way,
    write_wav,
)
from simulations.node_helpers import short_root

SCRIPT = SCRIPT_SENTENCES[:1]


async def _until(predicate, what: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout_s):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(0.1)


async def test_a_call_rings_and_is_answered_declined_or_timed_out_over_the_rpc() -> None:
    setup = await prepare_one_way(SCRIPT)
    checkpoint, models, audio = setup.checkpoint, setup.models, setup.audio
    with short_root() as root:
        wav = root / "ben.wav"
        write_wav(wav, audio)
        async with open_call_pair(root, caller_checkpoint=checkpoint, models=models) as pair:
            service = pair.handler.service
            service.answer_policy = AnswerPolicy.ASK
            caller_socket = pair.caller.home.socket_path
            callee_socket = pair.listener.home.socket_path
            place = {"peer": "listener", "lang": "pt", "from": "en", "in": str(wav)}

            async def ringing() -> list[dict[str, object]]:
                listed = await call(callee_socket, "call.list", {})
                assert isinstance(listed, list)
                return [c for c in listed if c["state"] == "ringing"]

            async def ended(call_id: int) -> dict[str, object] | None:
                listed = await call(caller_socket, "call.list", {"call_id": call_id})
                assert isinstance(listed, list)
                return listed[0]["ended"]  # type: ignore[no-any-return]

            # 1. Declined: the callee's user hangs up a ringing call.
            placed = await call(caller_socket, "call.place", place, timeout=60)
            assert isinstance(placed, dict) and placed["role"] == "caller"
            rings = await _until(ringing, "a ringing call")
            assert rings[0]["role"] == "callee" and rings[0]["call_id"] == placed["call_id"]
            status = pair.listener.status()
            calls_status = status["calls"]
            assert isinstance(calls_status, dict)
            assert calls_status["live"][0]["state"] == "ringing"
            # What `parley status` prints on its "calls" line.
            from daemon.status_view import _calls

            assert f"RINGING {rings[0]['call_id']} from " in _calls(calls_status)
            await call(callee_socket, "call.hangup", {"call_id": rings[0]["call_id"]})
            end = await _until(lambda: ended(placed["call_id"]), "the decline")
            assert end["reason"] == CallEndReason.DECLINED.value
            assert service.history[-1].end_reason is CallEndReason.DECLINED

            # 2. Nobody answers: the ring times out on the callee's clock.
            service.ring_timeout_s = 1.0
            placed = await call(caller_socket, "call.place", place, timeout=60)
            end = await _until(lambda: ended(placed["call_id"]), "the ring timeout")
            assert end["reason"] == CallEndReason.NO_ANSWER.value
            assert service.history[-1].end_reason is CallEndReason.NO_ANSWER

            # 3. Answered: the call runs, the caller's recording ends it, both record it.
            service.ring_timeout_s = 30.0
            placed = await call(caller_socket, "call.place", place, timeout=60)
            rings = await _until(ringing, "a ringing call")
            try:
                await call(caller_socket, "call.answer", {"call_id": placed["call_id"]})
            except RpcCallError as error:
                assert error.code == "not_ringing"  # our own outgoing call is not ours to answer
            else:
                raise AssertionError("the caller answered its own call")
            await call(callee_socket, "call.answer", {"call_id": rings[0]["call_id"]})
            end = await _until(lambda: ended(placed["call_id"]), "the end of the call", 120)
            assert end["reason"] == CallEndReason.HANGUP.value and end["ended_by_us"]
            record = service.history[-1]
            assert record.end_reason is CallEndReason.COMPLETED and record.call_dir is not None
            heard = (record.call_dir / "call.en.vtt").read_text()
            words = " ".join(line for line in heard.splitlines()[2:] if line and "-->" not in line)
            assert wer(" ".join(SCRIPT), words) <= 0.3, words
            listed = await call(caller_socket, "call.list", {"call_id": placed["call_id"]})
            captions = listed[0]["captions"]  # type: ignore[index]
            assert {(c["side"], c["language"]) for c in captions if c["final"]} >= {
                ("ours", "en"),
                ("ours", "pt"),
            }
            folder = listed[0]["folder"]  # type: ignore[index]
            assert folder is not None and (root / folder).joinpath("summary.json").is_file()
