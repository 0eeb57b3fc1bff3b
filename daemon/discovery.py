"""Finding peers: mDNS (python-zeroconf) announcements and static ``host:port:key`` entries.

Theory of operation
-------------------
Each node registers the service ``_parley._tcp.local.`` with TXT ``v=1``, ``pk=<base32 public
key>`` and ``name=<display name>``, and browses for the same type. Everything in a TXT record is
untrusted: :func:`parse_txt` is a pure validator that turns it into a :class:`DiscoveredPeer` or
``None`` (one debug line says why); the Noise handshake against ``pk`` is what authenticates the
peer later.

python-zeroconf runs its own asyncio loop in a thread. From trio (docs/design.md, "The node") we:

* create :class:`~zeroconf.Zeroconf` bound to explicit interface addresses (never
  ``InterfaceChoice.All``/``Default``), and call the blocking ``register_service`` (~1.6 s of
  probing), ``unregister_service`` (goodbye packets) and ``close`` in worker threads;
* let a :class:`~zeroconf.ServiceBrowser` call back on its own thread; the callback only hands
  the service name to trio through ``trio.from_thread.run_sync(..., trio_token=...)`` into a
  bounded memory channel (a full channel drops the change: the next one brings it back);
* resolve names with the blocking ``Zeroconf.get_service_info`` in a worker thread, validate,
  and publish the result on the channel the caller iterates.

mDNS says "added" once; a peer table with TTL expiry needs to hear from live peers regularly, so
every resolved peer is re-published every ``refresh_interval`` seconds until its service is
removed (goodbye or cache expiry), after which the table's TTL lets it go.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial

import ifaddr
import trio
from zeroconf import Error as ZeroconfError
from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from daemon.database import PUBLIC_KEY_BYTES, PeerSource
from daemon.errors import DaemonError
from daemon.peers import (
    InvalidPeerKeyError,
    InvalidPeerNameError,
    format_peer_id,
    parse_peer_key,
    short_peer_id,
    validate_peer_name,
)

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "DiscoveredPeer",
    "DiscoveryError",
    "MdnsDiscovery",
    "StaticPeerError",
    "build_txt",
    "local_interface_addresses",
    "open_mdns_discovery",
    "parse_static_peer",
    "parse_static_peers",
    "parse_txt",
]

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_parley._tcp.local."
TXT_VERSION = b"1"
DEFAULT_REFRESH_INTERVAL = 30.0
RESOLVE_TIMEOUT_MS = 3000
MAX_QUEUED_CHANGES = 64
#: Services the resolver keeps (and re-announces to the node every refresh); more are ignored
#: until some go away, so a flood of fake names costs a bounded amount of work.
MAX_LIVE_SERVICES = 256
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HEX_LIKE = re.compile(r"[0-9a-fA-F]{64}")
_BRACKETED = re.compile(r"\[([^\]]*)\]:([^:]*):(.*)")
_MAX_HOSTNAME_LENGTH = 253


class DiscoveryError(DaemonError):
    """Discovery cannot start or stop as asked; the message is one line."""


class StaticPeerError(DiscoveryError, ValueError):
    """A static peer entry that is not ``host:port:key``."""


@dataclass(frozen=True, slots=True)
class DiscoveredPeer:
    """A peer announcement: an *unauthenticated* claim until a handshake with the key succeeds."""

    public_key: bytes
    name: str | None
    host: str
    port: int
    source: PeerSource

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"peer public key must be {PUBLIC_KEY_BYTES} bytes")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")


class _Malformed(Exception):
    """Why a TXT record was ignored (internal; parse_txt turns it into None)."""


def build_txt(public_key: bytes, name: str) -> dict[bytes, bytes]:
    """The TXT properties we announce."""
    return {
        b"v": TXT_VERSION,
        b"pk": format_peer_id(public_key).encode("ascii"),
        b"name": validate_peer_name(name).encode("ascii"),
    }


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def on_link_networks(interfaces: Sequence[str]) -> list[Network]:
    """The networks our mDNS interfaces are on (address and prefix length from the system):
    a peer announcing an address outside them is not on our link, whatever it claims."""
    wanted = set(interfaces)
    found: list[Network] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            address = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            if address in wanted:
                network = ipaddress.ip_network(f"{address}/{entry.network_prefix}", strict=False)
                if network not in found:
                    found.append(network)
    return found


def parse_txt(
    properties: Mapping[bytes, bytes | None],
    *,
    addresses: Sequence[str],
    port: int | None,
    on_link: Sequence[Network] | None = None,
) -> DiscoveredPeer | None:
    """Validate an announcement (TXT properties plus the record's addresses and port).

    Returns ``None`` for anything malformed (wrong version, a key that is not exactly 32 bytes
    of base32, a bad name, no usable address, a bad port), logging one debug line. With
    ``on_link``, addresses outside those networks are not usable (off-link sources).
    """
    try:
        return _parse_txt_or_raise(properties, addresses=addresses, port=port, on_link=on_link)
    except _Malformed as exc:
        logger.debug("ignoring mDNS announcement: %s", exc)
        return None


def _parse_txt_or_raise(
    properties: Mapping[bytes, bytes | None],
    *,
    addresses: Sequence[str],
    port: int | None,
    on_link: Sequence[Network] | None = None,
) -> DiscoveredPeer:
    version = properties.get(b"v")
    if version != TXT_VERSION:
        raise _Malformed(f"unsupported version {version!r:.20}")
    encoded_key = properties.get(b"pk")
    if encoded_key is None:
        raise _Malformed("no pk")
    try:
        key_text = encoded_key.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _Malformed("pk is not ASCII") from exc
    if _HEX_LIKE.fullmatch(key_text):  # the TXT form is base32 only; hex is for humans
        raise _Malformed("pk must be base32")
    try:
        public_key = parse_peer_key(key_text)
    except InvalidPeerKeyError as exc:
        raise _Malformed(str(exc)) from exc
    name: str | None = None
    encoded_name = properties.get(b"name")
    if encoded_name is not None:
        try:
            name = validate_peer_name(encoded_name.decode("ascii"))
        except (UnicodeDecodeError, InvalidPeerNameError) as exc:
            raise _Malformed(f"bad name from {short_peer_id(public_key)}") from exc
    if port is None or type(port) is not int or not 1 <= port <= 65535:
        raise _Malformed(f"bad port {port!r:.20}")
    host = _pick_address(addresses, on_link)
    if host is None:
        raise _Malformed(f"no usable address among {list(addresses)[:4]!r:.100}")
    return DiscoveredPeer(
        public_key=public_key, name=name, host=host, port=port, source=PeerSource.MDNS
    )


def _pick_address(addresses: Iterable[str], on_link: Sequence[Network] | None = None) -> str | None:
    """The first usable unicast address, IPv4 before IPv6 (no scope ids to carry around); with
    ``on_link``, only an address inside one of those networks."""
    usable: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_multicast or address.is_unspecified or address.is_link_local:
            continue
        if on_link is not None and not any(
            address.version == network.version and address in network for network in on_link
        ):
            continue
        if isinstance(address, ipaddress.IPv4Address) and address.packed == b"\xff" * 4:
            continue
        usable.append(address)
    usable.sort(key=lambda address: address.version)
    return str(usable[0]) if usable else None


def parse_static_peer(text: str) -> DiscoveredPeer:
    """Parse ``host:port:key`` (IPv4, hostname) or ``[ipv6]:port:key`` from config."""
    entry = text.strip()
    bracketed = _BRACKETED.fullmatch(entry)
    if bracketed:
        host, port_text, key_text = bracketed.groups()
        try:
            if not isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
                raise ValueError(host)
        except ValueError as exc:
            raise StaticPeerError(
                f"static peer {entry!r}: {host!r} in brackets is not an IPv6 address"
            ) from exc
    else:
        parts = entry.split(":")
        if len(parts) != 3:
            hint = " (put IPv6 addresses in brackets)" if len(parts) > 3 else ""
            raise StaticPeerError(f"static peer {entry!r}: expected host:port:key{hint}")
        host, port_text, key_text = parts
        _check_host(entry, host)
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise StaticPeerError(f"static peer {entry!r}: port must be 1-65535")
    try:
        public_key = parse_peer_key(key_text)
    except InvalidPeerKeyError as exc:
        raise StaticPeerError(f"static peer {entry!r}: {exc}") from exc
    return DiscoveredPeer(
        public_key=public_key,
        name=None,
        host=host,
        port=int(port_text),
        source=PeerSource.STATIC,
    )


def parse_static_peers(entries: Iterable[str]) -> list[DiscoveredPeer]:
    return [parse_static_peer(entry) for entry in entries]


def _check_host(entry: str, host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise StaticPeerError(
                f"static peer {entry!r}: {host!r} is not an IPv4 address"
            ) from exc
        return
    labels = host.removesuffix(".").split(".")
    if (
        not host.isascii()
        or len(host) > _MAX_HOSTNAME_LENGTH
        or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)
    ):
        raise StaticPeerError(f"static peer {entry!r}: {host!r} is not a valid host name")


def local_interface_addresses() -> list[str]:
    """This machine's IPv4 interface addresses, loopback and link-local left out.

    What the node binds mDNS to when the config names no interfaces: an explicit list, never
    zeroconf's ``InterfaceChoice.All``/``Default``, so what is bound is known and logged.
    """
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            if not isinstance(entry.ip, str):
                continue  # IPv6 entries are (address, flowinfo, scope_id) tuples
            address = ipaddress.IPv4Address(entry.ip)
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            if str(address) not in found:
                found.append(str(address))
    return found


def _check_interfaces(interfaces: Sequence[str]) -> list[str]:
    if isinstance(interfaces, str) or not interfaces:
        raise DiscoveryError("mDNS needs a non-empty list of interface addresses")
    checked = []
    for text in interfaces:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise DiscoveryError(
                f"mDNS interface {text!r} is not an IP address of a local interface"
            ) from exc
        if address.is_unspecified or address.is_multicast:
            raise DiscoveryError(f"mDNS interface {text!r} must be one interface's address")
        checked.append(str(address))
    return checked


class MdnsDiscovery:
    """What :func:`open_mdns_discovery` yields: iterate it for :class:`DiscoveredPeer`s."""

    def __init__(self, peers: trio.MemoryReceiveChannel[DiscoveredPeer], instance: str) -> None:
        self._peers = peers
        self.instance_name = instance

    def __aiter__(self) -> AsyncIterator[DiscoveredPeer]:
        # The channel itself, not an async generator: breaking out of ``async for`` then needs
        # no aclosing() dance.
        return self._peers

    async def receive(self) -> DiscoveredPeer:
        """The next announcement (raises trio.EndOfChannel once discovery has stopped)."""
        return await self._peers.receive()


@asynccontextmanager
async def open_mdns_discovery(
    *,
    interfaces: Sequence[str],
    port: int,
    public_key: bytes,
    name: str,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
) -> AsyncIterator[MdnsDiscovery]:
    """Announce ourselves and browse for peers on ``interfaces`` (IP addresses) until exit.

    Our own announcement is filtered out. On exit the service is unregistered (goodbye packets)
    and zeroconf is closed, even when cancelled.
    """
    checked = _check_interfaces(interfaces)
    if not 1 <= port <= 65535:
        raise DiscoveryError(f"mDNS port out of range: {port}")
    if not (refresh_interval > 0 and math.isfinite(refresh_interval)):
        raise DiscoveryError(f"refresh interval must be positive, got {refresh_interval}")
    versions = {ipaddress.ip_address(text).version for text in checked}
    ip_version = (
        IPVersion.V4Only
        if versions == {4}
        else IPVersion.V6Only
        if versions == {6}
        else IPVersion.All
    )
    instance = f"parley-{short_peer_id(public_key)}"
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        parsed_addresses=checked,
        port=port,
        properties=build_txt(public_key, name),
        server=f"{instance}.local.",
    )
    try:
        zeroconf = await trio.to_thread.run_sync(
            partial(Zeroconf, interfaces=checked, ip_version=ip_version)
        )
    except OSError as exc:
        raise DiscoveryError(f"cannot start mDNS on {checked}: {exc.strerror or exc}") from exc
    browser: ServiceBrowser | None = None
    registered = False
    try:
        try:
            await trio.to_thread.run_sync(zeroconf.register_service, info)
        except NonUniqueNameException as exc:
            raise DiscoveryError(
                f"another node already announces identity {short_peer_id(public_key)} here"
            ) from exc
        registered = True
        peers_send, peers_receive = trio.open_memory_channel[DiscoveredPeer](MAX_QUEUED_CHANGES)
        resolver = _Resolver(
            zeroconf,
            our_key=public_key,
            peers=peers_send,
            refresh_interval=refresh_interval,
            # Interfaces the system does not list (unusual) leave the filter off, not mDNS.
            on_link=on_link_networks(checked) or None,
        )
        # The body's own exception is held and re-raised outside the nursery, so callers see
        # it as raised, not wrapped in an ExceptionGroup.
        body_error: BaseException | None = None
        async with peers_receive, trio.open_nursery() as nursery:
            await nursery.start(resolver.run)
            browser = ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[resolver.on_change])
            try:
                yield MdnsDiscovery(peers_receive, info.name)
            except GeneratorExit:
                raise
            except BaseException as exc:
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(
                partial(_shut_down, zeroconf, browser, info if registered else None)
            )


def _shut_down(
    zeroconf: Zeroconf, browser: ServiceBrowser | None, info: ServiceInfo | None
) -> None:
    if browser is not None:
        browser.cancel()
    if info is not None:
        zeroconf.unregister_service(info)
    zeroconf.close()


class _Resolver:
    """Turns browser callbacks (zeroconf's thread) into validated peers (trio)."""

    def __init__(
        self,
        zeroconf: Zeroconf,
        *,
        our_key: bytes,
        peers: trio.MemorySendChannel[DiscoveredPeer],
        refresh_interval: float,
        on_link: Sequence[Network] | None = None,
        max_live: int = MAX_LIVE_SERVICES,
    ) -> None:
        self._zeroconf = zeroconf
        self._on_link = on_link
        self._max_live = max_live
        self._our_key = our_key
        self._peers = peers
        self._refresh_interval = refresh_interval
        self._changes_send, self._changes_receive = trio.open_memory_channel[
            tuple[str, str, ServiceStateChange]
        ](MAX_QUEUED_CHANGES)
        self._token: trio.lowlevel.TrioToken | None = None
        self._live: dict[str, DiscoveredPeer] = {}  # service name -> last resolved peer

    def on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """ServiceBrowser handler, on zeroconf's browser thread: hand over, never block long."""
        assert self._token is not None
        # RunFinishedError: the node is shutting down and nobody needs the change any more.
        with suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(
                self._offer, (service_type, name, state_change), trio_token=self._token
            )

    def _offer(self, change: tuple[str, str, ServiceStateChange]) -> None:
        try:
            self._changes_send.send_nowait(change)
        except trio.WouldBlock:
            logger.debug("mDNS change queue full; dropping %s", change[1])
        except trio.ClosedResourceError:
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with (
            self._changes_send,
            self._changes_receive,
            self._peers,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._refresh)
            task_status.started()
            async for service_type, name, state_change in self._changes_receive:
                if state_change is ServiceStateChange.Removed:
                    self._live.pop(name, None)
                    continue
                if name not in self._live and len(self._live) >= self._max_live:
                    logger.debug("mDNS: %d services known; ignoring %s", self._max_live, name[:100])
                    continue
                peer = await self._resolve(service_type, name)
                if not self.remember(name, peer):
                    continue
                assert peer is not None
                await self._peers.send(peer)

    def remember(self, name: str, peer: DiscoveredPeer | None) -> bool:
        """Keep ``peer`` as what ``name`` resolves to; False (and forgotten) when it did not
        resolve, or when :data:`MAX_LIVE_SERVICES` others are already kept."""
        if peer is None:
            self._live.pop(name, None)
            return False
        if name not in self._live and len(self._live) >= self._max_live:
            return False
        self._live[name] = peer
        return True

    @property
    def live_count(self) -> int:
        return len(self._live)

    async def _refresh(self) -> None:
        while True:
            await trio.sleep(self._refresh_interval)
            for peer in list(self._live.values()):
                await self._peers.send(peer)

    async def _resolve(self, service_type: str, name: str) -> DiscoveredPeer | None:
        try:
            info = await trio.to_thread.run_sync(
                partial(self._zeroconf.get_service_info, service_type, name, RESOLVE_TIMEOUT_MS)
            )
        except (ZeroconfError, ValueError, OSError) as exc:
            # A hostile or odd announcement must not stop discovery.
            logger.debug("mDNS service %r did not resolve: %s", name[:100], exc)
            return None
        if info is None:
            logger.debug("mDNS service %s did not resolve", name)
            return None
        peer = parse_txt(
            info.properties,
            addresses=info.parsed_addresses(),
            port=info.port,
            on_link=self._on_link,
        )
        if peer is None or peer.public_key == self._our_key:
            return None
        return peer
