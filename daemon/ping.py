"""``parley ping``: how long a handshake with a peer takes, and round trips over the session.

The trio shell only: connect, run the Noise XK handshake as initiator (without our codec
bundle: a ping hands no weights to anyone), then send ``Ping(nonce)`` and time each matching
``Pong`` (the protocol's keepalive, answered by every node's session handler), then ``Bye``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from handshake.handshake import HandshakeRejected
from handshake.noise import StaticIdentity
from handshake.stream import SessionStream, initiate_session
from schemas.messages import Bye, ByeReason, Hello, Ping, Pong

CONNECT_TIMEOUT_S: Final = 5.0
PONG_TIMEOUT_S: Final = 5.0
MAX_COUNT: Final = 1000


class PingError(Exception):
    """The peer could not be reached or did not answer; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class PingResult:
    address: str
    connect_s: float
    handshake_s: float
    round_trips_s: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        trips = sorted(self.round_trips_s)
        return {
            "address": self.address,
            "connect_s": self.connect_s,
            "handshake_s": self.handshake_s,
            "round_trips_s": list(self.round_trips_s),
            "rtt_min_s": trips[0],
            "rtt_median_s": trips[len(trips) // 2],
            "rtt_max_s": trips[-1],
        }


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def ping_peer(
    *,
    identity: StaticIdentity,
    public_key: bytes,
    addresses: Sequence[tuple[str, int]],
    hello: Hello,
    count: int = 4,
    interval_s: float = 0.2,
    clock: Callable[[], float] = time.perf_counter,
) -> PingResult:
    """Handshake with the first address that answers; time ``count`` Ping/Pong round trips."""
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 1..{MAX_COUNT}, got {count}")
    if not addresses:
        raise PingError("no known address for this peer (give host:port:key)")
    failures: list[str] = []
    for host, port in addresses:
        started = clock()
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as error:
            reason = "timed out" if isinstance(error, trio.TooSlowError) else str(error)
            failures.append(f"{_show(host, port)}: {reason}")
            continue
        connected = clock()
        try:
            session = await initiate_session(
                tcp,
                identity=identity,
                responder_static_public=public_key,
                our_hello=hello,
                our_bundle=None,
            )
        except trio.BrokenResourceError as error:
            cause: BaseException = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, HandshakeRejected) and cause.reason is ByeReason.NOT_TRUSTED:
                raise PingError(
                    f"{_show(host, port)} refused the session: that node does not trust this one "
                    "(its trust.calls_from admits only peers it trusts)"
                ) from None
            raise PingError(f"handshake with {_show(host, port)} failed: {cause}") from None
        handshaken = clock()
        async with session:
            trips = await _round_trips(session, count, interval_s, clock)
        return PingResult(
            address=_show(host, port),
            connect_s=connected - started,
            handshake_s=handshaken - connected,
            round_trips_s=tuple(trips),
        )
    raise PingError("unreachable: " + "; ".join(failures))


async def _round_trips(
    session: SessionStream, count: int, interval_s: float, clock: Callable[[], float]
) -> list[float]:
    trips: list[float] = []
    for index in range(count):
        if index:
            await trio.sleep(interval_s)
        nonce = secrets.randbits(63)
        sent = clock()
        try:
            with trio.fail_after(PONG_TIMEOUT_S):
                await session.send_message(Ping(nonce))
                while True:
                    message = await session.receive_message()
                    if isinstance(message, Pong) and message.nonce == nonce:
                        break
                    if isinstance(message, Bye):
                        raise PingError(
                            f"the peer ended the session ({message.reason.name.lower()})"
                        )
        except trio.TooSlowError:
            raise PingError(f"no Pong within {PONG_TIMEOUT_S:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise PingError(f"the session broke: {error or type(error).__name__}") from None
        trips.append(clock() - sent)
    return trips
