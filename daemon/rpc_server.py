"""The status RPC server: msgpack-RPC (``daemon.rpc``) over a Unix socket, owner-only.

The socket lives in the node home with mode 0600, set *before* ``listen()``: a client can only
connect to a listening socket, so nobody can slip in between bind and chmod, and we avoid
touching the process-wide umask (other threads may be creating files at the same moment).

Startup refuses to steal a live socket (another node on the same home) and removes a stale one
left by a crash. Each connection runs its handlers concurrently, answers every request (unknown
methods and handler exceptions become structured errors), and a connection that sends garbage
is closed alone; the server keeps serving.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import NoReturn

import trio

from daemon.errors import EXIT_RUNTIME_FAILURE, DaemonError
from daemon.rpc import (
    MAX_PENDING,
    MAX_REQUEST_BYTES,
    NEED_DATA,
    ConnectionClosed,
    InvalidRequest,
    Params,
    RpcConnection,
    RpcError,
    RpcErrorCode,
    RpcHandlerError,
    RpcProtocolError,
    RpcRequest,
)

__all__ = [
    "MAX_UNIX_PATH_BYTES",
    "READ_SIZE",
    "Handler",
    "NodeAlreadyRunningError",
    "RpcServerError",
    "prepare_socket_path",
    "serve_rpc",
]

logger = logging.getLogger(__name__)

Handler = Callable[[Params], Awaitable[object]]

READ_SIZE = 16 * 1024
LISTEN_BACKLOG = 16
# sun_path is 108 bytes on Linux including the terminating NUL.
MAX_UNIX_PATH_BYTES = 107
SOCKET_MODE = 0o600


class RpcServerError(DaemonError):
    """The RPC socket cannot be set up; the message is one line and names the path."""


class NodeAlreadyRunningError(RpcServerError):
    """Another node answers on this home's socket: a runtime conflict, not a bad input."""

    exit_code = EXIT_RUNTIME_FAILURE


def _probe_live(path: Path) -> bool:
    """True if something accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except OSError as exc:
        # Refused or gone: stale. Anything else (EAGAIN with a full backlog, EACCES) means
        # something is there, so it must not be deleted.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


def prepare_socket_path(path: Path) -> None:
    """Check ``path`` is usable for a new socket, removing a stale one; else RpcServerError."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise RpcServerError(
            f"{path}: socket path is longer than {MAX_UNIX_PATH_BYTES} bytes (a Unix socket "
            "limit); use a shorter node home"
        )
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RpcServerError(f"{path}: exists and is not a socket; refusing to replace it")
    if _probe_live(path):
        raise NodeAlreadyRunningError(
            f"another node is already running with home {path.parent} (its socket {path} answers)"
        )
    logger.info("removing stale RPC socket %s", path)
    path.unlink(missing_ok=True)


async def serve_rpc(
    path: Path,
    handlers: Mapping[str, Handler],
    *,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_pending: int = MAX_PENDING,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``handlers`` on a Unix socket at ``path`` until cancelled; removes it on exit.

    Use with ``await nursery.start(serve_rpc, path, handlers)``: it returns once the socket
    is listening (mode 0600). Raises :class:`RpcServerError` if the socket cannot be set up.
    """
    prepare_socket_path(path)
    listener_socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await listener_socket.bind(os.fspath(path))
            our_inode = path.lstat().st_ino
            os.chmod(path, SOCKET_MODE)
            listener_socket.listen(LISTEN_BACKLOG)
        except OSError as exc:
            raise RpcServerError(f"{path}: cannot listen ({exc.strerror or exc})") from exc
    except BaseException:
        listener_socket.close()
        raise
    try:
        listener = trio.SocketListener(listener_socket)

        async def serve_one(stream: trio.SocketStream) -> None:
            await _serve_connection(
                stream, handlers, max_request_bytes=max_request_bytes, max_pending=max_pending
            )

        task_status.started(path)
        await trio.serve_listeners(serve_one, [listener])
    finally:
        listener_socket.close()
        _remove_if_ours(path, our_inode)
    raise AssertionError("serve_listeners returned")  # pragma: no cover - it never returns


def _remove_if_ours(path: Path, inode: int) -> None:
    # Another node may have replaced a socket it judged stale; never delete someone else's.
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


async def _serve_connection(
    stream: trio.abc.Stream,
    handlers: Mapping[str, Handler],
    *,
    max_request_bytes: int,
    max_pending: int,
) -> None:
    connection = RpcConnection(max_request_bytes=max_request_bytes, max_pending=max_pending)
    send_lock = trio.Lock()

    async def reply(data: bytes) -> None:
        try:
            async with send_lock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The client left; the read loop sees EOF or the same error and ends the connection.
            logger.debug("RPC client went away before its answer: %s", exc)

    async def run_handler(request: RpcRequest) -> None:
        handler = handlers.get(request.method)
        if handler is None:
            data = connection.send_error(
                request.msgid,
                RpcError(RpcErrorCode.METHOD_NOT_FOUND, f"no method named {request.method!r}"),
            )
        else:
            try:
                result = await handler(request.params)
            except RpcHandlerError as exc:
                data = connection.send_error(request.msgid, exc.error)
            except Exception as exc:
                logger.exception("RPC handler %r failed", request.method)
                data = connection.send_error(
                    request.msgid,
                    RpcError(RpcErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
                )
            else:
                data = connection.send_result(request.msgid, result)
        await reply(data)

    async def read_requests(nursery: trio.Nursery) -> None:
        while True:
            event = connection.next_event()
            if event is NEED_DATA:
                connection.receive_data(await stream.receive_some(READ_SIZE))
            elif isinstance(event, RpcRequest):
                nursery.start_soon(run_handler, event)
            elif isinstance(event, InvalidRequest):
                await reply(connection.send_error(event.msgid, event.error))
            else:
                assert isinstance(event, ConnectionClosed)
                return

    async with stream, trio.open_nursery() as nursery:
        try:
            await read_requests(nursery)
        except RpcProtocolError as exc:
            logger.debug("closing RPC connection after bad input: %s", exc)
            nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("RPC client went away: %s", exc)
            nursery.cancel_scope.cancel()
        # On a clean half-close the nursery waits for in-flight handlers to answer.
