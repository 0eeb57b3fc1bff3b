"""Discovery: TXT validation (pure), static peer parsing, and real mDNS over loopback."""

from __future__ import annotations

import base64
import ipaddress
import logging
import shutil
import subprocess
import sys

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from daemon.database import PeerSource
from daemon.discovery import (
    SERVICE_TYPE,
    DiscoveredPeer,
    DiscoveryError,
    StaticPeerError,
    build_txt,
    local_interface_addresses,
    open_mdns_discovery,
    parse_static_peer,
    parse_static_peers,
    parse_txt,
)
from daemon.peers import format_peer_id

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def _txt(key: bytes = KEY_A, name: str = "alice") -> dict[bytes, bytes | None]:
    return dict(build_txt(key, name))


# --- parse_txt --------------------------------------------------------------------------------


def test_parse_txt_round_trips_build_txt():
    peer = parse_txt(_txt(), addresses=["127.0.0.1"], port=4433)
    assert peer == DiscoveredPeer(
        public_key=KEY_A, name="alice", host="127.0.0.1", port=4433, source=PeerSource.MDNS
    )
    # The announced key is the standard base32 of the key (independent oracle: base64 module).
    assert _txt()[b"pk"] == base64.b32encode(KEY_A).rstrip(b"=").lower()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({b"v": b"2"}, "future version"),
        ({b"v": None}, "version without value"),
        ({b"pk": None}, "pk without value"),
        ({b"pk": base64.b32encode(KEY_A[:31]).rstrip(b"=").lower()}, "31-byte key"),
        ({b"pk": base64.b32encode(KEY_A + b"x").rstrip(b"=").lower()}, "33-byte key"),
        ({b"pk": KEY_A.hex().encode()}, "hex key (TXT is base32 only)"),
        ({b"pk": b"\xff" * 52}, "non-ASCII key"),
        ({b"name": b"x" * 64}, "name too long"),
        ({b"name": b""}, "empty name"),
        ({b"name": b"evil\x1b[31m"}, "control characters in name"),
        ({b"name": b" alice"}, "leading space"),
        ({b"name": "al\u00efce".encode()}, "non-ASCII name"),
    ],
)
def test_parse_txt_rejects_malformed_records(change, why, caplog):
    properties = _txt() | change
    with caplog.at_level(logging.DEBUG, logger="daemon.discovery"):
        assert parse_txt(properties, addresses=["127.0.0.1"], port=4433) is None, why
    assert len(caplog.records) == 1  # exactly one debug line, no traceback
    assert caplog.records[0].levelno == logging.DEBUG
    assert "\n" not in caplog.records[0].getMessage()


def test_parse_txt_requires_version_and_key():
    assert parse_txt({b"pk": _txt()[b"pk"]}, addresses=["127.0.0.1"], port=1) is None
    assert parse_txt({b"v": b"1"}, addresses=["127.0.0.1"], port=1) is None


def test_parse_txt_name_is_optional():
    properties = _txt()
    del properties[b"name"]
    peer = parse_txt(properties, addresses=["127.0.0.1"], port=9)
    assert peer is not None and peer.name is None


@pytest.mark.parametrize("port", [None, 0, 65536, -1])
def test_parse_txt_rejects_bad_ports(port):
    assert parse_txt(_txt(), addresses=["127.0.0.1"], port=port) is None


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["::1", "192.0.2.7"], "192.0.2.7"),  # IPv4 preferred
        (["fe80::1", "2001:db8::1"], "2001:db8::1"),  # link-local needs a scope: skipped
        (["224.0.0.251", "0.0.0.0", "255.255.255.255", "nonsense"], None),
        ([], None),
    ],
)
def test_parse_txt_address_choice(addresses, expected):
    peer = parse_txt(_txt(), addresses=addresses, port=7)
    assert (None if peer is None else peer.host) == expected


@given(
    st.dictionaries(st.binary(max_size=12), st.none() | st.binary(max_size=80), max_size=8),
    st.lists(st.text(max_size=40), max_size=4),
    st.none() | st.integers(min_value=-(2**33), max_value=2**33),
)
def test_parse_txt_never_raises_on_arbitrary_input(properties, addresses, port):
    peer = parse_txt(properties, addresses=addresses, port=port)
    if peer is not None:  # anything accepted is a real, well-formed announcement
        assert len(peer.public_key) == 32
        assert 1 <= peer.port <= 65535
        ipaddress.ip_address(peer.host)


@given(st.binary(min_size=32, max_size=32), st.from_regex(r"[A-Za-z0-9_.-]{1,63}", fullmatch=True))
def test_parse_txt_accepts_every_well_formed_announcement(key, name):
    peer = parse_txt(dict(build_txt(key, name)), addresses=["10.1.2.3"], port=4433)
    assert peer is not None and peer.public_key == key and peer.name == name


# --- static peers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host_part", "host"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("[::1]", "::1"),
        ("node-1.example.org", "node-1.example.org"),
        ("localhost", "localhost"),
    ],
)
@pytest.mark.parametrize("key_text", [format_peer_id(KEY_B), KEY_B.hex(), KEY_B.hex().upper()])
def test_static_peer_forms(host_part, host, key_text):
    peer = parse_static_peer(f"{host_part}:4433:{key_text}")
    assert peer == DiscoveredPeer(
        public_key=KEY_B, name=None, host=host, port=4433, source=PeerSource.STATIC
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("192.0.2.1:4433", "expected host:port:key"),
        (f"2001:db8::1:4433:{KEY_B.hex()}", "brackets"),
        (f"[192.0.2.1]:4433:{KEY_B.hex()}", "not an IPv6 address"),
        (f"999.0.2.1:4433:{KEY_B.hex()}", "not an IPv4 address"),
        (f"-bad-.example:4433:{KEY_B.hex()}", "not a valid host name"),
        (f"h\u00f6st:4433:{KEY_B.hex()}", "not a valid host name"),
        (f"host:0:{KEY_B.hex()}", "port must be 1-65535"),
        (f"host:65536:{KEY_B.hex()}", "port must be 1-65535"),
        (f"host:44a3:{KEY_B.hex()}", "port must be 1-65535"),
        (f"host:\u0664\u0664:{KEY_B.hex()}", "port must be 1-65535"),  # Arabic-Indic digits
        ("host:4433:abcdef", "not a peer key"),
        (f"host:4433:{KEY_B.hex()[:-2]}", "not a peer key"),
    ],
)
def test_static_peer_errors_are_one_line(text, fragment):
    with pytest.raises(StaticPeerError) as caught:
        parse_static_peer(text)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_parse_static_peers_parses_each():
    peers = parse_static_peers([f"10.0.0.1:1:{KEY_A.hex()}", f"[::1]:2:{format_peer_id(KEY_B)}"])
    assert [(peer.host, peer.port, peer.public_key) for peer in peers] == [
        ("10.0.0.1", 1, KEY_A),
        ("::1", 2, KEY_B),
    ]


# --- real mDNS on loopback ------------------------------------------------------------------


@pytest.fixture
def outbound_audit():
    """Record every datagram/connect destination zeroconf uses (belt and braces with conftest)."""
    seen: list[tuple[str, object]] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active[0] and event in ("socket.sendto", "socket.sendmsg", "socket.connect"):
            seen.append((event, args[1] if len(args) > 1 else None))

    sys.addaudithook(hook)  # audit hooks cannot be removed; the flag turns it off
    yield seen
    active[0] = False


def _destination_allowed(address: object) -> bool:
    if not isinstance(address, tuple):
        return True  # Unix sockets (trio's wakeup socketpair) have no IP destination
    host = ipaddress.ip_address(str(address[0]).split("%")[0])
    return host.is_loopback or str(host) == "224.0.0.251"


async def test_two_nodes_find_each_other_on_loopback(outbound_audit):
    async with (
        open_mdns_discovery(
            interfaces=["127.0.0.1"], port=40001, public_key=KEY_A, name="alice"
        ) as alice,
        open_mdns_discovery(
            interfaces=["127.0.0.1"],
            port=40002,
            public_key=KEY_B,
            name="bob",
            refresh_interval=0.2,
        ) as bob,
    ):
        assert alice.instance_name.endswith(SERVICE_TYPE)
        with trio.fail_after(20):
            seen_by_alice = await alice.receive()
            seen_by_bob = [await bob.receive()]
            # Live peers are re-published (so a TTL peer table keeps them), never ourselves.
            async for peer in bob:
                seen_by_bob.append(peer)
                if len(seen_by_bob) == 3:
                    break
    assert seen_by_alice == DiscoveredPeer(KEY_B, "bob", "127.0.0.1", 40002, PeerSource.MDNS)
    expected = DiscoveredPeer(KEY_A, "alice", "127.0.0.1", 40001, PeerSource.MDNS)
    assert seen_by_bob == [expected] * 3
    assert outbound_audit, "the audit hook saw no traffic at all"
    leaked = [entry for entry in outbound_audit if not _destination_allowed(entry[1])]
    assert leaked == []


async def test_body_exception_is_not_wrapped():
    with pytest.raises(KeyError):
        async with open_mdns_discovery(
            interfaces=["127.0.0.1"], port=40005, public_key=KEY_A, name="alice"
        ):
            raise KeyError("from the body")


@pytest.mark.parametrize("interfaces", [[], ["0.0.0.0"], ["eth0"], ["224.0.0.251"], "127.0.0.1"])
async def test_interfaces_must_be_explicit_addresses(interfaces):
    with pytest.raises(DiscoveryError):
        async with open_mdns_discovery(
            interfaces=interfaces, port=40006, public_key=KEY_A, name="alice"
        ):
            pass


def test_local_interface_addresses_match_the_system():
    ip_tool = shutil.which("ip")
    if ip_tool is None:
        pytest.skip("the ip tool (iproute2) is not installed: no independent oracle")
    output = subprocess.run(
        [ip_tool, "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    expected = {
        line.split()[3].split("/")[0]
        for line in output.splitlines()
        if not line.split()[3].startswith(("127.", "169.254."))
    }
    assert set(local_interface_addresses()) == expected
