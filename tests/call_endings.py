"""When a scripted caller hangs up: once the callee's speaker has played all of it.

A call that ends when the caller's recording ends cuts the callee's last translated utterance
short whenever its voice lags (Kokoro on a loaded 2-core box: 20-25 s mouth-to-ear measured),
and the tests that listen to the callee's speaker then hear half a sentence.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from daemon.call_audio import Playout
from daemon.calls import CallService

#: The caller hangs up anyway this long after its script (a hang guard, not a figure).
GIVE_UP_S = 300.0


async def hang_up_once_played(
    service: CallService,
    playout: Callable[[], Playout | None],
    hang_up: trio.Event,
    *,
    script_s: float,
    source: str = "en",
    target: str = "pt",
    quiet_s: float = 2.0,
) -> None:
    """Set ``hang_up`` once the caller's script (``script_s`` long) has gone out, every
    ``source`` caption the callee's node made of it has its ``target`` one (spoken before that
    caption is made: media.call_receiver) and the callee's ``playout`` has been idle for
    ``quiet_s`` (an echo tail has gone out too)."""
    await trio.sleep(script_s)
    quiet_since: float | None = None
    with trio.move_on_after(GIVE_UP_S):
        while True:
            await trio.sleep(0.1)
            finals = [
                line.language
                for call in service.live.calls()
                for line in call.captions
                if line.side == "theirs" and line.final
            ]
            speaker = playout()
            done = (
                finals.count(target) >= max(1, finals.count(source))
                and speaker is not None
                and speaker.buffer.idle()
            )
            now = trio.current_time()
            quiet_since = (quiet_since if quiet_since is not None else now) if done else None
            if quiet_since is not None and now - quiet_since >= quiet_s:
                break
    hang_up.set()
