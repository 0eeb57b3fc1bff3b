"""Status RPC: the sans-IO codec as in-memory pairs, then the trio server and client on a socket."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rpc import (
    MAX_PENDING,
    MAX_RESPONSE_BYTES,
    NEED_DATA,
    ConnectionClosed,
    InvalidRequest,
    RpcClientConnection,
    RpcConnection,
    RpcError,
    RpcErrorCode,
    RpcHandlerError,
    RpcLocalError,
    RpcProtocolError,
    RpcRequest,
    RpcResponse,
)
from daemon.rpc_client import (
    RpcBadResponseError,
    RpcCallError,
    RpcClientError,
    RpcTimeoutError,
    RpcUnavailableError,
    call,
    call_sync,
    open_rpc_client,
)
from daemon.rpc_server import NodeAlreadyRunningError, RpcServerError, serve_rpc
from schemas.errors import RemoteProtocolError


def _events(connection):
    events = []
    while (event := connection.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


# --- sans-IO ----------------------------------------------------------------------------------


def test_request_wire_format_matches_msgpack_rpc():
    client = RpcClientConnection()
    msgid, data = client.send_request("peers", {"all": True})
    assert msgpack.unpackb(data) == [0, msgid, "peers", {"all": True}]
    _, data = client.send_request("status")
    assert msgpack.unpackb(data)[3] == []


def test_pair_round_trip_fed_byte_by_byte():
    client, server = RpcClientConnection(), RpcConnection()
    first, request_one = client.send_request("status", [])
    second, request_two = client.send_request("peers", {"limit": 5})
    for byte in request_one + request_two:
        server.receive_data(bytes([byte]))
    assert server.next_event() == RpcRequest(first, "status", [])
    assert server.next_event() == RpcRequest(second, "peers", {"limit": 5})
    assert server.next_event() is NEED_DATA
    assert server.pending == {first, second}
    # Answer out of order; the client matches by msgid.
    answer_two = server.send_error(second, RpcError("unknown_peer", "no such peer"))
    answer_one = server.send_result(first, {"uptime": 1.5, "peers": [b"\x01" * 32]})
    assert msgpack.unpackb(answer_two) == [
        1,
        second,
        {"code": "unknown_peer", "message": "no such peer"},
        None,
    ]
    client.receive_data(answer_two + answer_one)
    assert _events(client) == [
        RpcResponse(second, RpcError("unknown_peer", "no such peer"), None),
        RpcResponse(first, None, {"uptime": 1.5, "peers": [b"\x01" * 32]}),
    ]
    assert server.pending == frozenset()


def test_clean_close_between_messages():
    server = RpcConnection()
    server.receive_data(msgpack.packb([0, 1, "status", []]))
    server.receive_data(b"")
    assert _events(server) == [RpcRequest(1, "status", []), ConnectionClosed()]
    assert isinstance(server.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ([0, 7, "status"], RpcErrorCode.INVALID_REQUEST),
        ([0, 7, "status", [], "extra"], RpcErrorCode.INVALID_REQUEST),
        ([0, 7, 42, []], RpcErrorCode.INVALID_REQUEST),
        ([0, 7, "", []], RpcErrorCode.INVALID_REQUEST),
        ([0, 7, "m" * 65, []], RpcErrorCode.INVALID_REQUEST),
        ([0, 7, "status", "params"], RpcErrorCode.INVALID_PARAMS),
        ([0, 7, "status", None], RpcErrorCode.INVALID_PARAMS),
    ],
)
def test_bad_request_with_msgid_gets_an_error_reply(message, code):
    server = RpcConnection()
    server.receive_data(msgpack.packb(message))
    (event,) = _events(server)
    assert isinstance(event, InvalidRequest) and event.msgid == 7 and event.error.code == code
    reply = msgpack.unpackb(server.send_error(event.msgid, event.error))
    assert reply[:2] == [1, 7] and reply[2]["code"] == code and reply[3] is None
    # The connection goes on.
    server.receive_data(msgpack.packb([0, 8, "status", []]))
    assert _events(server) == [RpcRequest(8, "status", [])]


def test_too_many_pending_is_answered_not_queued():
    server = RpcConnection(max_pending=2)
    server.receive_data(b"".join(msgpack.packb([0, i, "slow", []]) for i in range(4)))
    events = _events(server)
    assert [type(event) for event in events] == [
        RpcRequest,
        RpcRequest,
        InvalidRequest,
        InvalidRequest,
    ]
    assert events[2].error.code == RpcErrorCode.TOO_MANY_PENDING
    server.send_error(2, events[2].error)
    server.send_error(3, events[3].error)
    server.send_result(0, None)
    server.receive_data(msgpack.packb([0, 9, "slow", []]))
    assert _events(server) == [RpcRequest(9, "slow", [])]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xc1", "reserved msgpack byte"),
        (msgpack.packb({"method": "status"}), "not an array"),
        (msgpack.packb([]), "empty array"),
        (msgpack.packb([1, 0, None, None]), "a response sent to the server"),
        (msgpack.packb([2, "status", []]), "a notification"),
        (msgpack.packb([0, -1, "status", []]), "negative msgid"),
        (msgpack.packb([0, 2**32, "status", []]), "msgid over uint32"),
        (msgpack.packb([0, "1", "status", []]), "string msgid"),
        (msgpack.packb([0, True, "status", []]), "bool msgid"),
        (msgpack.packb([0]), "no msgid"),
        (msgpack.packb(msgpack.ExtType(5, b"x")), "extension type"),
        (msgpack.packb([0, 1, "status", [msgpack.Timestamp(1, 0)]]), "timestamp extension"),
        (b"\xa2\xff\xfe", "invalid UTF-8 string"),
        (b"\xdd\xff\xff\xff\xff", "array header claiming 4G items"),
        (b"\x91" * 2000 + b"\xc0", "nesting bomb"),
        (msgpack.packb([0, 1, "a", []]) + msgpack.packb([0, 1, "b", []]), "duplicate msgid"),
    ],
)
def test_unanswerable_input_closes_the_connection(data, why):
    server = RpcConnection()
    server.receive_data(data)
    with pytest.raises(RpcProtocolError) as caught:
        _events(server)
    assert isinstance(caught.value, RemoteProtocolError), why
    assert "\n" not in str(caught.value)
    with pytest.raises(RpcLocalError):
        server.next_event()
    with pytest.raises(RpcLocalError):
        server.receive_data(b"more")


def test_truncated_request_at_eof_is_an_error():
    server = RpcConnection()
    server.receive_data(msgpack.packb([0, 1, "status", []])[:-1])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(RpcProtocolError, match="middle"):
        server.next_event()


@pytest.mark.parametrize("chunk", [1, 1000, 10**6])
def test_oversized_request_is_refused_however_it_arrives(chunk):
    server = RpcConnection(max_request_bytes=1024)
    data = msgpack.packb([0, 1, "status", ["x" * 600, "y" * 600]])
    with pytest.raises(RpcProtocolError, match="exceeds 1024 bytes"):
        for start in range(0, len(data), chunk):
            server.receive_data(data[start : start + chunk])
            _events(server)


def test_many_small_pipelined_requests_are_not_mistaken_for_one_big_one():
    server = RpcConnection(max_request_bytes=256, max_pending=1000)
    data = b"".join(msgpack.packb([0, i, "status", ["p" * 50]]) for i in range(200))
    assert len(data) > 256 * 20
    server.receive_data(data)
    assert [event.msgid for event in _events(server)] == list(range(200))


def test_results_that_cannot_travel_become_error_replies():
    server = RpcConnection()
    server.receive_data(msgpack.packb([0, 1, "a", []]) + msgpack.packb([0, 2, "b", []]))
    _events(server)
    reply = msgpack.unpackb(server.send_result(1, {"obj": object()}))
    assert reply[2]["code"] == RpcErrorCode.UNSERIALIZABLE_RESULT and reply[1] == 1
    reply = msgpack.unpackb(server.send_result(2, b"\x00" * (MAX_RESPONSE_BYTES + 1)))
    assert reply[2]["code"] == RpcErrorCode.RESPONSE_TOO_LARGE
    with pytest.raises(RpcLocalError):
        server.send_result(1, None)  # already answered


def test_client_rejects_garbled_responses():
    client = RpcClientConnection()
    msgid, _ = client.send_request("status")
    client.receive_data(msgpack.packb([1, msgid + 1, None, "x"]))
    with pytest.raises(RpcProtocolError, match="unknown msgid"):
        client.next_event()
    client = RpcClientConnection()
    msgid, _ = client.send_request("status")
    client.receive_data(msgpack.packb([1, msgid, "just a string", None]))
    with pytest.raises(RpcProtocolError):
        client.next_event()
    with pytest.raises(RpcLocalError):
        RpcClientConnection().send_request("status", [object()])


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_only_ever_raise_rpc_protocol_error(data, chunk):
    server = RpcConnection(max_request_bytes=128, max_pending=4)
    try:
        for start in range(0, len(data), chunk):
            server.receive_data(data[start : start + chunk])
            for event in _events(server):
                if isinstance(event, RpcRequest | InvalidRequest):
                    server.send_error(event.msgid, RpcError("x", "y"))
        server.receive_data(b"")
        _events(server)
    except RpcProtocolError:
        pass


# --- trio server and client over a real Unix socket --------------------------------------------


@pytest.fixture
def socket_dir():
    # tmp_path can exceed the 108-byte AF_UNIX limit; a short directory in /tmp cannot.
    directory = Path(tempfile.mkdtemp(prefix="rpc", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def _echo(params):
    return {"params": params}


async def _boom(params):
    raise ValueError("handler exploded\nwith two lines")


async def _refuse(params):
    raise RpcHandlerError("unknown_peer", "no peer named carol")


async def _forever(params):
    await trio.sleep_forever()


HANDLERS = {"echo": _echo, "boom": _boom, "refuse": _refuse, "forever": _forever}


async def test_serve_and_call(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    started = await nursery.start(serve_rpc, path, HANDLERS)
    assert started == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await call(path, "echo", [1, "two", b"\x03"]) == {"params": [1, "two", b"\x03"]}
    assert await call(path, "echo") == {"params": []}
    with pytest.raises(RpcCallError) as caught:
        await call(path, "nope")
    assert caught.value.code == RpcErrorCode.METHOD_NOT_FOUND
    with pytest.raises(RpcCallError) as caught:
        await call(path, "boom")
    assert caught.value.code == RpcErrorCode.INTERNAL_ERROR
    assert "ValueError: handler exploded with two lines" in str(caught.value)
    with pytest.raises(RpcCallError) as caught:
        await call(path, "refuse")
    assert (caught.value.code, caught.value.error.message) == (
        "unknown_peer",
        "no peer named carol",
    )
    # One connection, many calls, errors in between do not break it.
    async with open_rpc_client(path) as client:
        assert await client.call("echo", {"a": 1}) == {"params": {"a": 1}}
        with pytest.raises(RpcCallError):
            await client.call("boom")
        assert await client.call("echo", [2]) == {"params": [2]}


async def test_garbage_closes_only_that_connection(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    await nursery.start(serve_rpc, path, HANDLERS)
    bad = await trio.open_unix_socket(str(path))
    other = await trio.open_unix_socket(str(path))
    await bad.send_all(b"\xc1garbage")
    assert await bad.receive_some(100) == b""  # closed by the server
    await bad.aclose()
    await other.send_all(msgpack.packb([0, 5, "echo", ["still here"]]))
    assert msgpack.unpackb(await other.receive_some(1000)) == [
        1,
        5,
        None,
        {"params": ["still here"]},
    ]
    await other.aclose()
    assert await call(path, "echo", [1]) == {"params": [1]}


async def test_malformed_request_with_msgid_gets_reply_on_the_socket(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    await nursery.start(serve_rpc, path, HANDLERS)
    async with await trio.open_unix_socket(str(path)) as stream:
        await stream.send_all(msgpack.packb([0, 3, 99, []]))
        reply = msgpack.unpackb(await stream.receive_some(1000))
        assert reply[:2] == [1, 3] and reply[2]["code"] == RpcErrorCode.INVALID_REQUEST


async def test_pipelined_requests_run_concurrently(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    release = trio.Event()

    async def slow(params):
        await release.wait()
        return "slow"

    async def fast(params):
        release.set()
        return "fast"

    await nursery.start(serve_rpc, path, {"slow": slow, "fast": fast})
    async with await trio.open_unix_socket(str(path)) as stream:
        await stream.send_all(msgpack.packb([0, 1, "slow", []]) + msgpack.packb([0, 2, "fast", []]))
        unpacker = msgpack.Unpacker()
        replies = []
        while len(replies) < 2:
            unpacker.feed(await stream.receive_some(1000))
            replies.extend(unpacker)
    assert replies == [[1, 2, None, "fast"], [1, 1, None, "slow"]]


async def test_pending_limit_over_the_socket(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    await nursery.start(serve_rpc, path, HANDLERS)
    async with await trio.open_unix_socket(str(path)) as stream:
        requests = [msgpack.packb([0, i, "forever", []]) for i in range(MAX_PENDING + 1)]
        await stream.send_all(b"".join(requests))
        reply = msgpack.unpackb(await stream.receive_some(1000))
    assert reply[1] == MAX_PENDING and reply[2]["code"] == RpcErrorCode.TOO_MANY_PENDING


async def test_timeout(socket_dir, nursery, autojump_clock):
    path = socket_dir / "rpc.sock"
    await nursery.start(serve_rpc, path, HANDLERS)
    with pytest.raises(RpcTimeoutError, match="within 3 s"):
        await call(path, "forever", timeout=3)
    async with open_rpc_client(path) as client:
        with trio.move_on_after(1):
            await client.call("forever")
        with pytest.raises(RpcBadResponseError, match="unusable"):
            await client.call("echo")


async def test_no_node_running(socket_dir):
    with pytest.raises(RpcUnavailableError, match="no parley node is running"):
        await call(socket_dir / "missing.sock", "status")


async def test_live_socket_is_not_stolen(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    await nursery.start(serve_rpc, path, HANDLERS)
    with pytest.raises(NodeAlreadyRunningError, match="another node is already running"):
        await serve_rpc(path, HANDLERS)
    assert await call(path, "echo") == {"params": []}  # the first server is unharmed


async def test_stale_socket_is_replaced_and_socket_removed_on_exit(socket_dir):
    path = socket_dir / "rpc.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a crashed node leaves behind
    assert stat.S_ISSOCK(path.lstat().st_mode)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_rpc, path, HANDLERS)
        assert await call(path, "echo", [1]) == {"params": [1]}
        nursery.cancel_scope.cancel()
    assert not path.exists()
    with pytest.raises(RpcUnavailableError):
        await call(path, "echo")


async def test_refuses_to_replace_a_regular_file(socket_dir):
    path = socket_dir / "rpc.sock"
    path.write_text("precious")
    with pytest.raises(RpcServerError, match="not a socket"):
        await serve_rpc(path, HANDLERS)
    assert path.read_text() == "precious"


async def test_overlong_path_is_a_clear_error(socket_dir):
    path = socket_dir / ("d" * 120) / "rpc.sock"
    with pytest.raises(RpcServerError, match="longer than 107 bytes"):
        await serve_rpc(path, HANDLERS)


async def test_call_sync_from_a_plain_thread(socket_dir, nursery):
    path = socket_dir / "rpc.sock"
    await nursery.start(serve_rpc, path, HANDLERS)
    result = await trio.to_thread.run_sync(lambda: call_sync(path, "echo", ["sync"]))
    assert result == {"params": ["sync"]}
    with pytest.raises(RpcCallError):
        await trio.to_thread.run_sync(lambda: call_sync(path, "nope"))


async def test_every_client_failure_is_an_rpc_client_error(socket_dir, nursery):
    path = socket_dir / "rpc.sock"

    async def hostile_server(task_status=trio.TASK_STATUS_IGNORED):
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await listener.bind(str(path))
        listener.listen(1)
        task_status.started()
        connection, _ = await listener.accept()
        with connection:
            await connection.recv(1000)
            await connection.send(b"\xc1\xc1\xc1")
        listener.close()

    await nursery.start(hostile_server)
    with pytest.raises(RpcClientError) as caught:
        await call(path, "status")
    assert isinstance(caught.value, RpcBadResponseError)
    assert os.path.exists(path)
