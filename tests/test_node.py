"""Real nodes in one trio process: discovery, trust, FL rounds over real handshakes, restart."""

from __future__ import annotations

import os
import threading
from contextlib import AsyncExitStack

import pytest
import trio

from daemon.database import PeerSource, TrustState
from daemon.discovery import DiscoveredPeer
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.peers import KeyChangedError
from daemon.rpc_client import call
from handshake.noise import StaticIdentity
from handshake.stream import initiate_session
from schemas.messages import PROTOCOL_VERSION, Hello
from simulations.node_helpers import initiate_to, loopback_config, make_home, short_root, wait_for

pytestmark = pytest.mark.slow


async def _start_nodes(
    stack: AsyncExitStack, root, *, count: int, mdns: bool, calls_from: str = "trusted"
) -> list[RunningNode]:
    homes = [make_home(root, f"n{index}") for index in range(count)]
    nodes: list[RunningNode] = []
    if mdns:
        for index, (home, _) in enumerate(homes):
            config = loopback_config(name=f"node{index}", mdns=True)
            nodes.append(
                await stack.enter_async_context(open_node(home, config, NodeOptions(listen_port=0)))
            )
        return nodes
    # Static peers need the ports first: bind, then tell each node the others' addresses.
    ports = []
    for _ in homes:
        with trio.socket.socket() as probe:
            await probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    for index, (home, _) in enumerate(homes):
        statics = tuple(
            f"127.0.0.1:{ports[other]}:{homes[other][1].public_key.hex()}"
            for other in range(count)
            if other != index
        )
        config = loopback_config(name=f"node{index}", mdns=False, static_peers=statics)
        config = config.replace("trust", calls_from=calls_from)
        nodes.append(
            await stack.enter_async_context(
                open_node(home, config, NodeOptions(listen_port=ports[index]))
            )
        )
    return nodes


def _trust_everyone(nodes: list[RunningNode]) -> None:
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.peers.trust(other.identity.public_key.hex())


async def _two_rounds_over_rpc(nodes: list[RunningNode]) -> None:
    for node in nodes:
        first = await call(node.home.socket_path, "round.start", {"wait": True}, timeout=60)
        assert first["status"] == "completed", first
        assert len(first["peers"]) == len(nodes) - 1, first
    for node in nodes:
        second = await call(node.home.socket_path, "round.start", {"wait": True}, timeout=60)
        assert second["status"] == "completed" and second["round"] == 2, second
    for node in nodes:
        status = await call(node.home.socket_path, "status")
        assert status["node_id"] == node.peer_id
        assert status["counts"]["rounds_completed"] == 2
        assert status["counts"]["peers_trusted"] == len(nodes) - 1
        assert status["last_round"]["round"] == 2
        # The node serves calls (up to the configured number at once); none was placed.
        assert status["calls"] == {
            "active": 0,
            "max": node.config.call.max_concurrent,
            "load": {
                "decode_s": None,
                "pending_audio_s": 0,
                "predicted_caption_delay_s": 0.0,
            },
            "recent": [],
            # Calls ringing or running (issue 14: `parley status` shows a ringing call).
            "live": [],
        }
        assert status["faults"] == {"total": 0, "by_type": {}, "by_unit": {}}
        rounds = await call(node.home.socket_path, "rounds")
        assert [item["round"] for item in rounds] == [2, 1]
        assert all(item["record"]["participants"] for item in rounds)
        assert status["model_version"] == rounds[0]["record"]["model_version"]


async def test_three_nodes_discover_each_other_over_mdns_and_run_two_rounds():
    with short_root() as root:
        async with AsyncExitStack() as stack:
            nodes = await _start_nodes(stack, root, count=3, mdns=True)
            await wait_for(
                lambda: all(len(node.peers.present()) == 2 for node in nodes),
                timeout=30,
                what="mDNS discovery of all three nodes",
            )
            names = {peer.name for peer in nodes[0].peers.present()}
            assert names == {"node1", "node2"}
            _trust_everyone(nodes)
            await _two_rounds_over_rpc(nodes)


async def test_three_nodes_with_static_peers_only():
    with short_root() as root:
        async with AsyncExitStack() as stack:
            nodes = await _start_nodes(stack, root, count=3, mdns=False)
            assert all(len(node.peers.present()) == 2 for node in nodes)
            _trust_everyone(nodes)
            await _two_rounds_over_rpc(nodes)
            sessions = await call(nodes[0].home.socket_path, "sessions")
            assert isinstance(sessions, list)


async def test_untrusted_peer_is_seen_but_gets_no_weights():
    # calls_from = "known" lets a stranger's handshake complete (the default refuses it).
    with short_root() as root:
        async with AsyncExitStack() as stack:
            (node,) = await _start_nodes(stack, root, count=1, mdns=False, calls_from="known")
            stranger = StaticIdentity.generate()
            hello = Hello(
                protocol_version=PROTOCOL_VERSION,
                capabilities=("fl/1",),
                codec_architecture=node.codecs.current().config.architecture_id,
                codec_version_hash=b"\x00" * 32,
            )
            stream = await trio.open_tcp_stream("127.0.0.1", node.listen_port)
            session = await initiate_session(
                stream,
                identity=stranger,
                responder_static_public=node.identity.public_key,
                our_hello=hello,
                our_bundle=node.codecs.current().bundle,
            )
            async with session:
                # The responder's first transport message is on the wire: it held no weights.
                assert session.their_bundle is None
                assert session.their_hello.codec_version_hash == node.codecs.current().version_hash
            await wait_for(
                lambda: (
                    node.peers.get(stranger.public) is not None
                    and node.connections.stats.bundles_received == 1
                ),
                timeout=5,
                what="the stranger in the peer table and its bundle seen",
            )
            record = node.peers.get(stranger.public)
            assert record.trust is TrustState.KNOWN  # seen, not trusted
            stats = node.connections.stats
            assert stats.bundles_sent == 0
            assert stats.rejected.get("bundle_from_untrusted_peer") == 1
            # And its bundle was not queued for aggregation.
            record = await node.scheduler.run_round()
            assert record.peers == ()


async def test_trusted_peer_gets_weights_from_the_responder():
    with short_root() as root:
        async with AsyncExitStack() as stack:
            (node,) = await _start_nodes(stack, root, count=1, mdns=False)
            friend = StaticIdentity.generate()
            node.peers.observe(friend.public, name="friend", address=None, source=PeerSource.STATIC)
            node.peers.trust("friend")
            session = await initiate_to(node, friend)
            async with session:
                assert session.their_bundle == node.codecs.current().bundle


async def test_restart_keeps_identity_peers_trust_model_and_rounds():
    with short_root() as root:
        async with AsyncExitStack() as stack:
            nodes = await _start_nodes(stack, root, count=2, mdns=False)
            _trust_everyone(nodes)
            await nodes[0].scheduler.run_round()
            await nodes[0].scheduler.run_round()
            before = nodes[0].status()
            home, config = nodes[0].home, nodes[0].config
            peers_before = {(p.public_key, p.trust) for p in nodes[0].peers.known()}
        async with open_node(home, config, NodeOptions(listen_port=0)) as again:
            after = again.status()
            assert after["node_id"] == before["node_id"]
            assert after["model_version"] == before["model_version"]
            assert after["counts"]["rounds_completed"] == 2
            assert {(p.public_key, p.trust) for p in again.peers.known()} == peers_before
            assert again.codecs.current().checkpoint.round == 2


async def test_a_known_name_with_a_changed_key_is_refused():
    with short_root() as root:
        async with AsyncExitStack() as stack:
            (node,) = await _start_nodes(stack, root, count=1, mdns=False)
            original = StaticIdentity.generate().public
            impostor = StaticIdentity.generate().public
            node.observe(DiscoveredPeer(original, "alice", "127.0.0.1", 9, PeerSource.MDNS))
            node.observe(DiscoveredPeer(impostor, "alice", "127.0.0.1", 9, PeerSource.MDNS))
            assert node.peers.get(impostor) is None
            assert [event.offered_key for event in node.peers.key_changes()] == [impostor]
            with pytest.raises(KeyChangedError):
                node.peers.observe(impostor, name="alice", address=None, source=PeerSource.MDNS)


async def test_rpc_errors_are_structured_replies():
    from daemon.rpc_client import RpcCallError

    with short_root() as root:
        async with AsyncExitStack() as stack:
            (node,) = await _start_nodes(stack, root, count=1, mdns=False)
            with pytest.raises(RpcCallError) as caught:
                await call(node.home.socket_path, "no.such.method")
            assert caught.value.code == "method_not_found"
            with pytest.raises(RpcCallError) as caught:
                await call(node.home.socket_path, "rounds", {"limit": "many"})
            assert caught.value.code == "invalid_params"
            # The connection-level server is still serving.
            assert (await call(node.home.socket_path, "status"))["node_id"] == node.peer_id


async def test_shutdown_leaves_no_threads_or_descriptors():
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with short_root() as root:
        # Warm up lazy imports and thread pools once, so the baseline is steady.
        async with AsyncExitStack() as stack:
            await _start_nodes(stack, root / "warm", count=1, mdns=True)
        await trio.sleep(0.2)
        threads_before = threading.active_count()
        descriptors_before = open_descriptors()
        async with AsyncExitStack() as stack:
            nodes = await _start_nodes(stack, root / "run", count=2, mdns=True)
            await wait_for(
                lambda: all(node.peers.present() for node in nodes),
                timeout=30,
                what="mDNS discovery",
            )
            _trust_everyone(nodes)
            await nodes[0].scheduler.run_round()
        await wait_for(
            lambda: threading.active_count() <= threads_before,
            timeout=10,
            what="node threads to finish",
        )
        assert open_descriptors() <= descriptors_before
        assert not any(node.home.socket_path.exists() for node in nodes)
