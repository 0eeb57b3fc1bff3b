"""mDNS that follows a laptop's network: re-bind and re-announce when addresses change.

When ``discovery.interfaces`` is empty the node announces on this machine's interface
addresses as they are at start. On a laptop those come and go (Wi-Fi joins another network, a
VPN or a dock appears, DHCP hands out a new lease), and a node bound to the old addresses would
go silent. :func:`follow_interfaces` polls the addresses every :data:`INTERFACE_POLL_S`; when
the set changes it ends the running discovery (goodbye packets where the old address still
works) and starts it again on the new set, which binds the new sockets and announces the new
addresses. With no usable address it waits for one. A discovery that fails to start on an
address that vanished meanwhile is logged and retried at the next change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from daemon.discovery import DiscoveryError, local_interface_addresses
from daemon.logs import event, get_logger

log = get_logger("discovery")

#: How often the interface addresses are read (ifaddr: one netlink dump, cheap).
INTERFACE_POLL_S: Final = 5.0


async def follow_interfaces(
    serve: Callable[[list[str]], Awaitable[None]],
    *,
    read_addresses: Callable[[], Awaitable[list[str]]] | None = None,
    poll_s: float = INTERFACE_POLL_S,
) -> None:
    """Run ``serve(addresses)`` on the current addresses, restarting it whenever they change.

    Returns when ``serve`` returns on its own; runs until cancelled otherwise.
    ``read_addresses`` defaults to :func:`~daemon.discovery.local_interface_addresses`, run
    off the event loop.
    """
    read = read_addresses if read_addresses is not None else _read_local_addresses
    addresses = await read()
    while True:
        changed: list[str] | None = None
        async with trio.open_nursery() as nursery:

            async def watch(current: list[str]) -> None:
                nonlocal changed
                while True:
                    await trio.sleep(poll_s)
                    now = await read()
                    if set(now) != set(current):
                        changed = now
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch, addresses)
            if not addresses:
                event(log, logging.WARNING, "mdns.no_interfaces")
                await trio.sleep_forever()
            try:
                await serve(list(addresses))
            except (DiscoveryError, OSError) as error:
                event(
                    log,
                    logging.WARNING,
                    "mdns.failed",
                    interfaces=",".join(addresses),
                    reason=str(error),
                )
                await trio.sleep_forever()  # until the addresses change
            nursery.cancel_scope.cancel()
        if changed is None:
            return
        event(
            log,
            logging.INFO,
            "mdns.interfaces_changed",
            old=",".join(addresses) or "none",
            new=",".join(changed) or "none",
        )
        addresses = changed


async def _read_local_addresses() -> list[str]:
    return await trio.to_thread.run_sync(local_interface_addresses)
