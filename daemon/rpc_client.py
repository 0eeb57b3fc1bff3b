"""The status RPC client: what ``parley status`` and friends use to talk to a running node.

Every failure reaches the caller as one :class:`RpcClientError` subclass with a one-line message:
no node listening, a timeout, an error answer from the node (with its code), or a garbled reply.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from daemon.rpc import (
    MAX_RESPONSE_BYTES,
    NEED_DATA,
    ConnectionClosed,
    Params,
    RpcClientConnection,
    RpcError,
    RpcLocalError,
    RpcProtocolError,
    RpcResponse,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RpcBadResponseError",
    "RpcCallError",
    "RpcClient",
    "RpcClientError",
    "RpcTimeoutError",
    "RpcUnavailableError",
    "call",
    "call_sync",
    "open_rpc_client",
]

DEFAULT_TIMEOUT = 10.0
READ_SIZE = 64 * 1024


class RpcClientError(Exception):
    """Root of everything :func:`call` raises; messages are one line."""


class RpcUnavailableError(RpcClientError):
    """Nothing listens on the socket (no node running), or we may not connect to it."""


class RpcTimeoutError(RpcClientError):
    """The node did not answer in time."""


class RpcBadResponseError(RpcClientError):
    """The node's reply was not valid msgpack-RPC, or it closed the connection mid-call."""


class RpcCallError(RpcClientError):
    """The node answered with an error; ``code`` says which (e.g. ``method_not_found``)."""

    def __init__(self, method: str, error: RpcError) -> None:
        super().__init__(f"{method}: {error.message} [{error.code}]")
        self.method = method
        self.code = error.code
        self.error = error


class RpcClient:
    """One open connection; calls on it run one at a time."""

    def __init__(self, stream: trio.abc.Stream, *, max_response_bytes: int) -> None:
        self._stream = stream
        self._connection = RpcClientConnection(max_response_bytes=max_response_bytes)
        self._lock = trio.Lock()
        self._broken = False

    async def call(self, method: str, params: Params | None = None) -> object:
        async with self._lock:
            if self._broken:
                raise RpcBadResponseError(f"{method}: connection unusable after a failed call")
            try:
                msgid, data = self._connection.send_request(method, params)
            except RpcLocalError as exc:
                raise RpcClientError(f"{method}: {exc}") from exc
            # Until the answer is read, an interruption (timeout, cancel, broken pipe) leaves
            # a response in flight that a later call would take for its own.
            self._broken = True
            response = await self._exchange(method, data)
            self._broken = False
        assert response.msgid == msgid  # calls are serialised by the lock
        if response.error is not None:
            raise RpcCallError(method, response.error)
        return response.result

    async def _exchange(self, method: str, data: bytes) -> RpcResponse:
        try:
            await self._stream.send_all(data)
            while True:
                event = self._connection.next_event()
                if event is NEED_DATA:
                    self._connection.receive_data(await self._stream.receive_some(READ_SIZE))
                elif isinstance(event, ConnectionClosed):
                    raise RpcBadResponseError(f"{method}: the node closed the connection")
                else:
                    return event
        except (RpcProtocolError, RpcLocalError) as exc:
            raise RpcBadResponseError(f"{method}: bad reply from the node ({exc})") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise RpcBadResponseError(f"{method}: connection to the node broke") from exc


@asynccontextmanager
async def open_rpc_client(
    path: Path, *, max_response_bytes: int = MAX_RESPONSE_BYTES
) -> AsyncIterator[RpcClient]:
    """Connect to the node's RPC socket at ``path``."""
    try:
        stream = await trio.open_unix_socket(os.fspath(path))
    except OSError as exc:
        raise RpcUnavailableError(_describe_connect_failure(path, exc)) from exc
    async with stream:
        yield RpcClient(stream, max_response_bytes=max_response_bytes)


def _describe_connect_failure(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return f"no parley node is running (nothing listens on {path})"
    if exc.errno == errno.EACCES:
        return f"permission denied on {path} (the node belongs to another user)"
    return f"cannot connect to {path} ({exc.strerror or exc})"


async def call(
    path: Path,
    method: str,
    params: Params | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> object:
    """Connect, make one call, return its result. Raises only :class:`RpcClientError`s."""
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    try:
        with trio.fail_after(timeout):
            async with open_rpc_client(path, max_response_bytes=max_response_bytes) as client:
                return await client.call(method, params)
    except trio.TooSlowError as exc:
        raise RpcTimeoutError(f"{method}: the node did not answer within {timeout:g} s") from exc


def call_sync(
    path: Path,
    method: str,
    params: Params | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> object:
    """:func:`call` for synchronous code (the CLI); must not be used inside a trio run."""
    return trio.run(
        partial(call, path, method, params, timeout=timeout, max_response_bytes=max_response_bytes)
    )
