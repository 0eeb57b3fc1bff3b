"""``parley ping``: handshake time and Ping/Pong round trips over a real session (issue 19)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import trio

from codec.config import CodecConfig
from daemon.codec_store import CodecStore
from daemon.database import PeerSource
from daemon.node import CAPABILITIES, NodeOptions, open_node
from daemon.ping import PingError, ping_peer
from handshake.noise import StaticIdentity
from schemas.messages import PROTOCOL_VERSION, Hello
from simulations.node_helpers import loopback_config, make_home, short_root


def hello_of(home) -> Hello:
    ours = CodecStore(home.models_dir, home.features_dir, CodecConfig()).current()
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        capabilities=CAPABILITIES,
        codec_architecture=ours.config.architecture_id,
        codec_version_hash=ours.version_hash,
    )


def parley(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True, timeout=60
    )


async def test_ping_times_the_handshake_and_round_trips_and_sends_no_weights():
    with short_root() as root:
        home_b, identity_b = make_home(root, "b")
        home_a, identity_a = make_home(root, "a")
        hello = hello_of(home_a)
        config = loopback_config(name="b", mdns=False)
        async with open_node(home_b, config, NodeOptions(listen_port=0)) as node:
            # b admits sessions from peers it trusts only (trust.calls_from's default).
            node.peers.observe(
                identity_a.public_key, name=None, address=None, source=PeerSource.STATIC
            )
            node.peers.trust(identity_a.public_key.hex())
            result = await ping_peer(
                identity=StaticIdentity(identity_a.private_key),
                public_key=identity_b.public_key,
                addresses=[("127.0.0.1", node.listen_port)],
                hello=hello,
                count=3,
                interval_s=0.0,
            )
            stats = node.connections.stats
            assert stats.handshakes_completed == 1
            assert stats.bundles_received == 0  # a ping hands no weights to anyone
            peer = node.peers.get(identity_a.public_key)
            assert peer is not None and peer.last_handshake is not None
            # The CLI, in a thread (the node runs on this trio loop), human and JSON.
            target = f"127.0.0.1:{node.listen_port}:{identity_b.public_key.hex()}"
            human = await trio.to_thread.run_sync(
                parley, "ping", target, "--count", "2", "--home", str(home_a.root)
            )
            machine = await trio.to_thread.run_sync(
                parley, "ping", target, "-c", "2", "--json", "--home", str(home_a.root)
            )
        assert result.address == f"127.0.0.1:{node.listen_port}"
        assert len(result.round_trips_s) == 3
        assert all(0 < trip < 5 for trip in result.round_trips_s)
        assert 0 < result.handshake_s < 10
        assert human.returncode == 0, human.stderr
        assert "handshake" in human.stdout and human.stdout.count("pong ") == 2
        assert machine.returncode == 0, machine.stderr
        report = json.loads(machine.stdout)
        assert len(report["round_trips_s"]) == 2
        assert report["rtt_min_s"] <= report["rtt_median_s"] <= report["rtt_max_s"]
        assert report["handshake_s"] > 0


async def test_ping_to_a_node_that_does_not_trust_us_says_so():
    with short_root() as root:
        home_b, identity_b = make_home(root, "b")
        home_a, identity_a = make_home(root, "a")
        config = loopback_config(name="b", mdns=False)
        async with open_node(home_b, config, NodeOptions(listen_port=0)) as node:
            try:
                await ping_peer(
                    identity=StaticIdentity(identity_a.private_key),
                    public_key=identity_b.public_key,
                    addresses=[("127.0.0.1", node.listen_port)],
                    hello=hello_of(home_a),
                    count=1,
                    interval_s=0.0,
                )
            except PingError as error:
                assert "does not trust this one" in str(error)
            else:
                raise AssertionError("an untrusted ping got a session")


async def test_ping_to_a_closed_port_is_one_error():
    with short_root() as root:
        home_a, identity_a = make_home(root, "a")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            await ping_peer(
                identity=StaticIdentity(identity_a.private_key),
                public_key=b"\x01" * 32,
                addresses=[("127.0.0.1", port)],
                hello=hello_of(home_a),
            )
        except PingError as error:
            assert str(error).startswith(f"unreachable: 127.0.0.1:{port}: ")
        else:
            raise AssertionError("ping to a closed port succeeded")
        result = await trio.to_thread.run_sync(
            parley, "ping", f"127.0.0.1:{port}:{'ab' * 32}", "--home", str(home_a.root)
        )
        assert result.returncode == 1
        assert result.stderr.startswith("parley: ping ") and "unreachable" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
