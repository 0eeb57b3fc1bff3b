"""Issue 12's seams: the node wired from parts, typed views at the RPC edge, errors and
rejections chosen by type (never by message text), one trust vocabulary, one validation per
bundle, retired wire kinds and Bye reasons.

Budget: one in-process node per async test (a second each), no models beyond the shipped codec.
"""

from __future__ import annotations

import dataclasses

import capnp
import msgpack
import pytest
import trio

from codec.bundle import compute_content_hash, state_from_bundle
from codec.config import CodecConfig
from codec.errors import BundleProblem, CodecError, InvalidBundleError
from codec.model import expected_shapes, new_model, state_to_numpy
from common.errors import ParleyError
from daemon.calls import dial_peer
from daemon.cli import _exit_code, _one_expected_failure
from daemon.config import ConfigError, InvalidSetting
from daemon.connections import ConnectionManager, bundle_rejection_code, reason_code
from daemon.database import DatabaseError, PeerSource, PeerStore, open_database
from daemon.errors import EXIT_RUNTIME_FAILURE, EXIT_USER_ERROR, DaemonError
from daemon.faults import FaultLog
from daemon.node import RPC_METHODS, NodeOptions, open_node
from daemon.peers import PeerTable
from daemon.rpc_client import call
from daemon.rpc_handlers import serve_methods
from daemon.rpc_server import NodeAlreadyRunningError
from daemon.trust import CallsFrom
from daemon.trust_policy import TrustPolicy
from daemon.views import (
    NodeStatus,
    PeerView,
    StatusReport,
    ViewError,
    from_wire,
    to_wire,
)
from fl.errors import FLError
from handshake.noise import StaticIdentity
from handshake.stream import PeerClosedError, StreamSettings
from media.errors import MediaError
from schemas import codec as wire
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.messages import PROTOCOL_VERSION, Bye, ByeReason
from simulations.node_helpers import loopback_config, make_home, short_root


def _broken(cause: BaseException) -> trio.BrokenResourceError:
    error = trio.BrokenResourceError("broken")
    error.__cause__ = cause
    return error


# -- typed seams ----------------------------------------------------------------------------


def test_a_rejection_follows_the_type_of_the_cause_not_its_text() -> None:
    # A peer that vanished is peer_closed whatever the message says...
    assert reason_code(_broken(PeerClosedError("gone")), in_handshake=True) == "peer_closed"
    # ...and another protocol error is not peer_closed because its text says so.
    text_alike = RemoteProtocolError("peer closed the connection without Bye")
    assert reason_code(_broken(text_alike), in_handshake=False) == "protocol_error"


def _bundle_with_renamed_tensor(name: str) -> object:
    from codec.bundle import bundle_from_state

    config = CodecConfig()
    bundle = bundle_from_state(
        state_to_numpy(new_model(config)),
        architecture_id=config.architecture_id,
        round=0,
        sample_count=1,
    )
    first = dataclasses.replace(bundle.tensors[0], name=name)
    unsigned = dataclasses.replace(bundle, tensors=(first, *bundle.tensors[1:]), content_hash=b"")
    return dataclasses.replace(unsigned, content_hash=compute_content_hash(unsigned))


def test_a_bundle_is_counted_by_its_typed_problem_even_when_peer_text_names_another() -> None:
    config = CodecConfig()
    # A tensor name chosen by the peer used to steer the substring classifier ("architecture").
    bundle = _bundle_with_renamed_tensor("architecture non-finite content hash")
    with pytest.raises(InvalidBundleError) as caught:
        state_from_bundle(
            bundle,  # type: ignore[arg-type]
            expected_architecture_id=config.architecture_id,
            expected_shapes=expected_shapes(config),
        )
    assert caught.value.problem is BundleProblem.TENSOR_NAMES
    assert bundle_rejection_code(caught.value) == "invalid_bundle:tensor_names"


def test_every_package_root_is_a_parley_error_and_carries_its_exit_code() -> None:
    for root in (CodecError, FLError, MediaError, DaemonError, DatabaseError, ConfigError):
        assert issubclass(root, ParleyError), root
    from daemon.node import ListenError

    assert _exit_code(ListenError("port taken")) == EXIT_RUNTIME_FAILURE
    assert _exit_code(NodeAlreadyRunningError("running")) == EXIT_RUNTIME_FAILURE
    assert _exit_code(ConfigError("bad")) == EXIT_USER_ERROR
    assert _exit_code(MediaError("bad file")) == EXIT_USER_ERROR
    leaf = DatabaseError("locked")
    assert _one_expected_failure(ExceptionGroup("start", [leaf])) is leaf
    assert _one_expected_failure(ExceptionGroup("start", [leaf, KeyError("bug")])) is None


def test_one_trust_vocabulary_from_config_to_policy() -> None:
    with short_root() as root:
        database = open_database(root / "node.db")
        try:
            peers = PeerTable(PeerStore(database), ttl=1.0)
            assert TrustPolicy(peers, calls_from="known").calls_from is CallsFrom.KNOWN
            with pytest.raises(ValueError, match="friends"):
                TrustPolicy(peers, calls_from="friends")  # type: ignore[arg-type]
        finally:
            database.close()
    config = loopback_config(name="n", mdns=False)
    with pytest.raises(InvalidSetting, match="must be one of .trusted., .known., .anyone."):
        config.replace("trust", calls_from="friends")


def test_a_retired_wire_kind_is_the_peers_protocol_error() -> None:
    schema = capnp.load(str(wire._SCHEMA_PATH))
    envelope = schema.Envelope.new_message()
    envelope.version = PROTOCOL_VERSION
    envelope.body.retired3 = None
    with pytest.raises(RemoteProtocolError, match="not part of the protocol"):
        wire.decode(envelope.to_bytes())
    assert {reason.name for reason in ByeReason} == {"NORMAL", "SHUTDOWN", "NOT_TRUSTED"}


# -- typed views ----------------------------------------------------------------------------


def test_views_survive_the_wire_and_a_wrong_shape_names_its_field() -> None:
    peer = PeerView(
        id="ab" * 32,
        fingerprint="abab",
        key_changed_to=(),
        name=None,
        trust="known",
        source="mdns",
        addresses=("127.0.0.1:9",),
        last_seen=None,
        last_handshake=1.5,
    )
    shown = to_wire(peer)
    assert "present" not in shown  # parley peers list --json stays as it was
    decoded = msgpack.unpackb(msgpack.packb(shown, use_bin_type=True), raw=False)
    assert from_wire(PeerView, decoded) == peer
    with pytest.raises(ViewError, match=r"PeerView\.addresses\[0\]"):
        from_wire(PeerView, {**shown, "addresses": [7]})
    with pytest.raises(ViewError, match="node_id is missing"):
        from_wire(StatusReport, {"status": {}})


# -- the node wired from parts --------------------------------------------------------------


async def test_the_node_serves_every_modules_methods_once_with_typed_views() -> None:
    with short_root() as root:
        home, _ = make_home(root, "n")
        config = loopback_config(name="n", mdns=False)
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            served = serve_methods(node, RPC_METHODS, FaultLog())
            assert {"status", "peers", "sessions", "rounds", "round.start", "jobs"} <= set(served)
            assert {"caption.submit", "dub.submit", "web.info", "shutdown"} <= set(served)
            with pytest.raises(ValueError, match="served twice"):
                serve_methods(node, (*RPC_METHODS, RPC_METHODS[0]), FaultLog())
            status = from_wire(NodeStatus, await call(home.socket_path, "status"))
            assert status.node_id == node.peer_id and status.counts.sessions == 0
            assert status == from_wire(NodeStatus, to_wire(status))


async def test_a_connection_manager_refuses_to_serve_before_it_is_wired() -> None:
    with short_root() as root:
        database = open_database(root / "node.db")
        try:
            peers = PeerTable(PeerStore(database), ttl=1.0)
            manager = ConnectionManager(
                identity=StaticIdentity.generate(),
                hello=lambda: None,  # type: ignore[arg-type,return-value]
                our_bundle=lambda: None,  # type: ignore[arg-type,return-value]
                peers=peers,
                policy=TrustPolicy(peers),
                settings=StreamSettings(),
                max_concurrent_handshakes=1,
                handshakes_per_address_per_s=1.0,
            )
            with pytest.raises(LocalProtocolError, match="wire"):
                await manager.serve("127.0.0.1", 0)
        finally:
            database.close()


async def test_a_round_validates_each_bundle_once() -> None:
    with short_root() as root:
        home, _ = make_home(root, "n")
        config = loopback_config(name="n", mdns=False)
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            calls: list[bytes] = []
            validate = node.codecs.validated_state

            def counting(bundle, codec_config):  # type: ignore[no-untyped-def]
                calls.append(bundle.content_hash)
                return validate(bundle, codec_config)

            node.codecs.validated_state = counting  # type: ignore[method-assign]
            friend = StaticIdentity.generate()
            assert (
                node.scheduler.receive_bundle(friend.public, node.codecs.current().bundle) is None
            )
            record = await node.scheduler.run_round()
    assert record.status.value == "completed", record
    assert len(record.peers) == 1
    assert len(calls) == 1, calls


async def test_shutdown_says_bye_with_its_reason() -> None:
    with short_root() as root:
        home, _ = make_home(root, "n")
        config = loopback_config(name="n", mdns=False)
        friend = StaticIdentity.generate()
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            node.peers.observe(friend.public, name="friend", address=None, source=PeerSource.STATIC)
            node.peers.trust("friend")
            session = await dial_peer(
                identity=friend,
                public_key=node.identity.public_key,
                addresses=[("127.0.0.1", node.listen_port)],
                hello=node.hello(),
                bundle=node.codecs.current().bundle,
            )
            with trio.fail_after(5):
                while not node.connections.sessions:  # registered once its peer is recorded
                    await trio.sleep(0.01)
        with trio.fail_after(5):
            message = await session.receive_message()
        await session.aclose()
    assert message == Bye(ByeReason.SHUTDOWN)
    # A handler that finds its session closed by the shutdown is a normal end, not a fault
    # (it used to be counted, and its socket dropped under the Bye being sent).
    assert node.faults.counts == {}, node.faults.counts
