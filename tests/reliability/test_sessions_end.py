"""Issue #11 item 8: sessions end.

A ping no longer keeps a session for ever, a session without a call lives at most
``SESSION_MAX_AGE_S`` (WireGuard's REJECT_AFTER_TIME, 180 s), and a peer that stops reading
cannot pin the task that writes to it. Virtual time (trio's autojump clock): runs in < 1 s.
"""

from __future__ import annotations

import trio
import trio.testing

from daemon.connections import (
    SESSION_IDLE_TIMEOUT_S,
    SESSION_MAX_AGE_S,
    SessionInfo,
    SessionLifetime,
    reason_code,
    serve_idle_session,
)
from handshake.stream import SendTimeoutError, SessionStream, StreamSettings
from schemas.messages import CodecFrames, Ping, Pong
from tests.test_stream import handshake_pair

INFO = SessionInfo(
    session_id=1, peer=b"\x01" * 32, direction="inbound", address="127.0.0.1", started_at=0.0,
    trust="known",
)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pings_are_not_activity_and_age_is_bounded():
    clock = Clock()
    lifetime = SessionLifetime(clock=clock, idle_s=120.0, max_age_s=180.0)
    for _ in range(11):  # a ping every 10 s: answered, but it does not count
        clock.now += 10.0
    assert not lifetime.over
    clock.now = 120.0
    assert lifetime.over
    busy = SessionLifetime(clock=clock, idle_s=120.0, max_age_s=180.0)
    for _ in range(30):  # real traffic every 10 s still ends at the maximum age
        clock.now += 10.0
        busy.activity()
    assert busy.over and clock.now - 120.0 >= 180.0


async def _serve_noting_the_end(
    session: SessionStream, info: SessionInfo, ended_at: list[float], close: bool = True
) -> None:
    """The node's idle-session handler on ``session``; when it returns, note the time (and
    close the session, as the node does)."""
    await serve_idle_session(session, info)
    ended_at.append(trio.current_time())
    if close:
        await session.aclose()


async def test_a_peer_that_only_pings_is_closed_when_idle(autojump_clock):
    left, right = trio.testing.memory_stream_pair()
    ours, theirs = await handshake_pair(left, right)
    ended_at: list[float] = []
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_noting_the_end, theirs, INFO, ended_at)
        with trio.move_on_after(SESSION_MAX_AGE_S * 10):
            for nonce in range(10_000):  # bounded: the session ends long before
                await ours.send_message(Ping(nonce=nonce))
                answer = await ours.receive_message()
                if not isinstance(answer, Pong):
                    break
                await trio.sleep(30.0)
    assert ended_at, "a pinging peer kept the session open for ever"
    assert ended_at[0] - started <= SESSION_IDLE_TIMEOUT_S + 31.0


async def test_a_busy_session_without_a_call_ends_at_its_maximum_age(autojump_clock):
    left, right = trio.testing.memory_stream_pair()
    ours, theirs = await handshake_pair(left, right)
    ended_at: list[float] = []
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_noting_the_end, theirs, INFO, ended_at)
        with trio.move_on_after(SESSION_MAX_AGE_S * 10):
            for index in range(10_000):
                try:
                    await ours.send_message(CodecFrames(index, 0.0, 1, b"\x00"))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if ended_at:
                    break
                await trio.sleep(10.0)
    assert ended_at and ended_at[0] - started <= SESSION_MAX_AGE_S + 11.0


async def test_the_age_comes_from_the_session_info(autojump_clock):
    """Config ``session.max_age_s`` reaches handlers through SessionInfo."""
    from dataclasses import replace

    left, right = trio.testing.memory_stream_pair()
    ours, theirs = await handshake_pair(left, right)
    short = replace(INFO, max_age_s=30.0, idle_s=1000.0)
    ended_at: list[float] = []
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_noting_the_end, theirs, short, ended_at, False)
        with trio.move_on_after(600):
            for index in range(1000):  # bounded; the handler returns long before
                await ours.send_message(CodecFrames(index, 0.0, 1, b"\x00"))
                if ended_at:
                    break
                await trio.sleep(5.0)
    assert ended_at and 30.0 <= ended_at[0] - started <= 36.0


async def test_a_peer_that_stops_reading_cannot_pin_the_writer(autojump_clock):
    left, right = trio.testing.lockstep_stream_pair()  # a write waits for the reader
    settings = StreamSettings(send_timeout_s=5.0)
    ours, theirs = await handshake_pair(left, right, settings=settings)
    started = trio.current_time()
    error: BaseException | None = None
    with trio.move_on_after(3600):  # bounded: without a send deadline this hangs for an hour
        try:
            await theirs.send_message(CodecFrames(1, 0.0, 1, b"\x00" * 1000))
        except trio.BrokenResourceError as caught:
            error = caught
    assert error is not None, "a peer that never reads held the writer"
    assert isinstance(error.__cause__, SendTimeoutError)
    assert reason_code(error, in_handshake=False) == "send_timeout"
    assert trio.current_time() - started <= 5.0 + 1.0
    del ours
