"""A guard that fails the test run on any traffic that could leave this machine.

Installed by ``conftest.py`` with :func:`sys.addaudithook`, so it sees every ``socket.connect``
and ``socket.sendto`` in the process, from any library and any thread. A forbidden destination
raises :class:`NetworkGuardError` before the system call happens (nothing is sent) and is
recorded, so the run fails even if the caller swallows the exception.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

#: The only places traffic may go: loopback, and the mDNS multicast group.
ALLOWED_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("224.0.0.251/32"),
    ipaddress.ip_network("ff02::fb/128"),
)
GUARDED_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})


class NetworkGuardError(RuntimeError):
    """A test tried to send traffic outside loopback (or mDNS multicast)."""


def destination_allowed(address: Any) -> bool:
    """Whether a socket address (as passed to connect/sendto) stays on this machine."""
    if isinstance(address, str | bytes):  # AF_UNIX paths and abstract sockets
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a hostname would be resolved by the OS: could be anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in ALLOWED_NETWORKS)


class NetworkGuard:
    def __init__(self) -> None:
        self.violations: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in GUARDED_EVENTS:
            return
        sock, address = args[0], args[-1]
        if event == "socket.sendmsg":
            address = args[-1] if len(args) > 1 else None
            if address is None:  # sendmsg on a connected socket: connect was checked
                return
        if isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX:
            return
        if not destination_allowed(address):
            message = f"{event} to {address!r} would leave this machine"
            self.violations.append(message)
            raise NetworkGuardError(message)
