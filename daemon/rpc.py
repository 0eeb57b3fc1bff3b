"""Sans-IO msgpack-RPC for the local status socket: bytes in, typed events and bytes out.

Theory of operation
-------------------
The wire format is plain msgpack-RPC over a byte stream: a request is the msgpack array
``[0, msgid, method, params]`` and a response ``[1, msgid, error, result]``, where ``error`` is
``nil`` or the map ``{"code": str, "message": str}``. Messages follow each other with no extra
framing; msgpack objects are self-delimiting.

:class:`RpcConnection` is the server side. Feed it what the socket gave (``receive_data``), then
pull events with ``next_event()`` until it answers :data:`NEED_DATA`:

* :class:`RpcRequest` — run the handler, then serialise its answer with ``send_result`` or
  ``send_error`` and write the bytes;
* :class:`InvalidRequest` — the input was wrong but carried a msgid we can answer to (a bad
  method name, bad params, too many requests in flight): write ``send_error(msgid, error)``;
* :class:`ConnectionClosed` — the client closed its side cleanly.

Input that cannot be answered (not msgpack, a message over the size limit, no usable msgid, a
duplicate msgid, a truncated message at EOF) raises :class:`RpcProtocolError` and moves the
connection to ``ERROR``; every later call raises again. The shell closes that one connection.

:class:`RpcClientConnection` is the mirror image for the client: ``send_request`` gives a msgid
and bytes, ``next_event`` yields :class:`RpcResponse`.

Both sides bound what a peer can make us hold: :data:`MAX_REQUEST_BYTES` / a response limit per
message (counted from the end of the previous message, since msgpack's own buffer limit does not
bound a message that arrives in pieces), container and string sizes, nesting depth (msgpack's
own stack limit), and :data:`MAX_PENDING` requests awaiting an answer. Extension types
(including msgpack's Timestamp) are refused outright: the status RPC never needs them.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, TypeAlias, TypeVar

import msgpack

from schemas.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_CONTAINER_ITEMS",
    "MAX_METHOD_LENGTH",
    "MAX_MSGID",
    "MAX_PENDING",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "NEED_DATA",
    "ConnectionClosed",
    "InvalidRequest",
    "Params",
    "RpcClientConnection",
    "RpcConnection",
    "RpcError",
    "RpcErrorCode",
    "RpcHandlerError",
    "RpcLocalError",
    "RpcProtocolError",
    "RpcRequest",
    "RpcResponse",
]

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

MAX_REQUEST_BYTES: Final = 64 * 1024
# Responses carry peer tables, round histories, job lists: larger, but still bounded.
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
MAX_PENDING: Final = 32
MAX_MSGID: Final = 2**32 - 1  # msgpack-RPC msgids are uint32
MAX_METHOD_LENGTH: Final = 64
MAX_CONTAINER_ITEMS: Final = 4096
MAX_MESSAGE_TEXT: Final = 1000  # an error message longer than this is cut

Params: TypeAlias = list[object] | dict[str, object]


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class RpcErrorCode(enum.StrEnum):
    """The codes the RPC layer itself produces; handlers may use their own (RpcHandlerError)."""

    METHOD_NOT_FOUND = "method_not_found"
    INVALID_REQUEST = "invalid_request"
    INVALID_PARAMS = "invalid_params"
    INTERNAL_ERROR = "internal_error"
    TOO_MANY_PENDING = "too_many_pending"
    UNSERIALIZABLE_RESULT = "unserializable_result"
    RESPONSE_TOO_LARGE = "response_too_large"


@dataclass(frozen=True, slots=True)
class RpcError:
    """A structured RPC error as it travels: ``{"code": ..., "message": ...}``."""

    code: str
    message: str

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": _one_line(self.message)}


class RpcProtocolError(RemoteProtocolError):
    """The other side sent bytes we cannot answer; close this connection only."""


class RpcLocalError(LocalProtocolError):
    """We misused the connection (answering an unknown msgid, using it after an error)."""


class RpcHandlerError(Exception):
    """Raised by a handler to send a specific error code (e.g. ``unknown_peer``) to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = RpcError(code=code, message=message)


@dataclass(frozen=True, slots=True)
class RpcRequest:
    msgid: int
    method: str
    params: Params


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """A request we can answer, but only with ``error``."""

    msgid: int
    error: RpcError


@dataclass(frozen=True, slots=True)
class RpcResponse:
    msgid: int
    error: RpcError | None
    result: object


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The other side closed its sending half at a message boundary."""


_EventT = TypeVar("_EventT")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE_TEXT else line[: MAX_MESSAGE_TEXT - 3] + "..."


def _reject_ext(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _is_plain(value: object, depth: int = 0) -> bool:
    """Only msgpack's core types reach handlers.

    The unpacker already refuses every extension type (``max_ext_len=0``, which also catches the
    Timestamp type that bypasses ``ext_hook``); this walk keeps that true if the limits change.
    """
    if depth > 64:
        return False
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return True
    if isinstance(value, list):
        return all(_is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(_is_plain(item, depth + 1) for item in value.values())
    return False


class _MessageReader:
    """Splits a byte stream into msgpack objects, each at most ``max_message_bytes`` long."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            max_buffer_size=max_message_bytes,
            max_str_len=max_message_bytes,
            max_bin_len=max_message_bytes,
            max_array_len=MAX_CONTAINER_ITEMS,
            max_map_len=MAX_CONTAINER_ITEMS,
            max_ext_len=0,
        )
        self._backlog = bytearray()
        self._fed = 0
        self._message_start = 0  # stream offset where the current message began
        self.eof = False

    @property
    def mid_message(self) -> bool:
        return bool(self._backlog) or self._fed > self._message_start

    def receive_data(self, data: bytes | bytearray) -> None:
        if not data:
            self.eof = True
        self._backlog += data

    def next_object(self) -> object:
        """The next complete object, or NEED_DATA. Raises RpcProtocolError on bad input."""
        while True:
            try:
                value = self._unpacker.unpack()
            except msgpack.OutOfData:
                pass
            except (msgpack.UnpackException, ValueError, TypeError) as exc:
                raise RpcProtocolError(f"undecodable msgpack: {_describe(exc)}") from exc
            else:
                self._message_start = self._unpacker.tell()
                return value
            used = self._fed - self._message_start
            room = self._max_message_bytes - used
            if room <= 0:
                raise RpcProtocolError(f"message exceeds {self._max_message_bytes} bytes")
            if not self._backlog:
                return NEED_DATA
            chunk = bytes(self._backlog[:room])
            del self._backlog[:room]
            try:
                self._unpacker.feed(chunk)
            except msgpack.BufferFull as exc:  # cannot happen given `room`; kept as a guard
                raise RpcProtocolError(f"message exceeds {self._max_message_bytes} bytes") from exc
            self._fed += len(chunk)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return _one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _valid_msgid(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_MSGID


class _Endpoint(Generic[_EventT]):
    """What both sides share: the message reader, the state, the msgids awaiting an answer,
    and turning the next message into an event."""

    #: What the other side sends: "request" or "response".
    _incoming: ClassVar[str]

    def __init__(self, max_message_bytes: int) -> None:
        self._reader = _MessageReader(max_message_bytes)
        self._pending: set[int] = set()
        self._state = _State.OPEN

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the socket; ``b""`` means the other side closed its half."""
        self._require_usable()
        self._reader.receive_data(data)

    def next_event(self) -> _EventT | ConnectionClosed | NeedData:
        self._require_usable()
        if self._state is _State.CLOSED:
            return ConnectionClosed()
        try:
            value = self._reader.next_object()
            if value is NEED_DATA:
                if self._reader.eof:
                    if self._reader.mid_message:
                        raise RpcProtocolError(
                            f"connection closed in the middle of a {self._incoming}"
                        )
                    self._state = _State.CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            return self._classify(value)
        except RpcProtocolError:
            self._state = _State.ERROR
            raise

    def _require_usable(self) -> None:
        if self._state is _State.ERROR:
            raise RpcLocalError("the RPC connection is in the error state")

    def _classify(self, value: object) -> _EventT:
        raise NotImplementedError


class RpcConnection(_Endpoint[RpcRequest | InvalidRequest]):
    """Server side of one msgpack-RPC connection (see the module docstring)."""

    _incoming = "request"

    def __init__(
        self, *, max_request_bytes: int = MAX_REQUEST_BYTES, max_pending: int = MAX_PENDING
    ) -> None:
        if max_request_bytes < 16 or max_pending < 1:
            raise ValueError("max_request_bytes must be >= 16 and max_pending >= 1")
        super().__init__(max_request_bytes)
        self._max_pending = max_pending

    @property
    def pending(self) -> frozenset[int]:
        """Msgids handed out as events and not yet answered."""
        return frozenset(self._pending)

    def send_result(self, msgid: int, result: object) -> bytes:
        """The response bytes for a successful call.

        A result msgpack cannot encode, or one over MAX_RESPONSE_BYTES, becomes an error reply
        instead: the client always gets an answer.
        """
        self._take_pending(msgid)
        try:
            data: bytes = msgpack.packb([RESPONSE, msgid, None, result], use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            return self._pack_error(
                msgid,
                RpcError(
                    RpcErrorCode.UNSERIALIZABLE_RESULT, f"result not encodable: {_describe(exc)}"
                ),
            )
        if len(data) > MAX_RESPONSE_BYTES:
            return self._pack_error(
                msgid,
                RpcError(
                    RpcErrorCode.RESPONSE_TOO_LARGE,
                    f"result is {len(data)} bytes, over the {MAX_RESPONSE_BYTES} byte limit",
                ),
            )
        return data

    def send_error(self, msgid: int, error: RpcError) -> bytes:
        self._take_pending(msgid)
        return self._pack_error(msgid, error)

    def _pack_error(self, msgid: int, error: RpcError) -> bytes:
        data: bytes = msgpack.packb([RESPONSE, msgid, error.to_wire(), None], use_bin_type=True)
        return data

    def _take_pending(self, msgid: int) -> None:
        self._require_usable()
        if msgid not in self._pending:
            raise RpcLocalError(f"no request with msgid {msgid} is awaiting an answer")
        self._pending.discard(msgid)

    def _classify(self, value: object) -> RpcRequest | InvalidRequest:
        if not isinstance(value, list) or not value:
            raise RpcProtocolError("a message must be a non-empty msgpack array")
        kind = value[0]
        if kind != REQUEST or type(kind) is not int:
            if kind == NOTIFICATION and type(kind) is int:
                raise RpcProtocolError("notifications are not supported")
            raise RpcProtocolError(f"expected a request (type 0), got type {kind!r:.20}")
        if len(value) < 2 or not _valid_msgid(value[1]):
            raise RpcProtocolError("request without a valid msgid (uint32)")
        msgid = value[1]
        assert isinstance(msgid, int)
        if msgid in self._pending:
            # Answering would resolve the first request with this id on the client: unanswerable.
            raise RpcProtocolError(f"msgid {msgid} is already awaiting an answer")
        self._pending.add(msgid)
        if len(self._pending) > self._max_pending:
            return InvalidRequest(
                msgid,
                RpcError(
                    RpcErrorCode.TOO_MANY_PENDING,
                    f"more than {self._max_pending} requests in flight; wait for answers",
                ),
            )
        if len(value) != 4:
            return InvalidRequest(
                msgid,
                RpcError(
                    RpcErrorCode.INVALID_REQUEST,
                    f"a request has 4 elements, got {len(value)}",
                ),
            )
        method, params = value[2], value[3]
        if not isinstance(method, str) or not 1 <= len(method) <= MAX_METHOD_LENGTH:
            return InvalidRequest(
                msgid,
                RpcError(
                    RpcErrorCode.INVALID_REQUEST,
                    f"method must be a string of 1-{MAX_METHOD_LENGTH} characters",
                ),
            )
        if not isinstance(params, list | dict) or not _is_plain(params):
            return InvalidRequest(
                msgid,
                RpcError(
                    RpcErrorCode.INVALID_PARAMS,
                    "params must be an array or a map of plain msgpack values",
                ),
            )
        return RpcRequest(msgid=msgid, method=method, params=params)


class RpcClientConnection(_Endpoint[RpcResponse]):
    """Client side: serialises requests and matches responses to them."""

    _incoming = "response"

    def __init__(self, *, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        super().__init__(max_response_bytes)
        self._msgids = itertools.count()

    def send_request(self, method: str, params: Params | None = None) -> tuple[int, bytes]:
        """A fresh msgid and the request's bytes. Raises RpcLocalError for unencodable params."""
        self._require_usable()
        msgid = next(self._msgids) % (MAX_MSGID + 1)
        if msgid in self._pending:
            raise RpcLocalError(f"msgid {msgid} is still awaiting an answer")
        try:
            data: bytes = msgpack.packb(
                [REQUEST, msgid, method, [] if params is None else params], use_bin_type=True
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise RpcLocalError(f"params not encodable: {_describe(exc)}") from exc
        self._pending.add(msgid)
        return msgid, data

    def _classify(self, value: object) -> RpcResponse:
        if not isinstance(value, list) or len(value) != 4:
            raise RpcProtocolError("a response must be a 4-element msgpack array")
        kind, msgid, error, result = value
        if kind != RESPONSE or type(kind) is not int:
            raise RpcProtocolError(f"expected a response (type 1), got type {kind!r:.20}")
        if not _valid_msgid(msgid) or msgid not in self._pending:
            raise RpcProtocolError(f"response to an unknown msgid {msgid!r:.20}")
        assert isinstance(msgid, int)
        self._pending.discard(msgid)
        if error is None:
            return RpcResponse(msgid=msgid, error=None, result=result)
        return RpcResponse(msgid=msgid, error=_parse_error(error), result=None)


def _parse_error(error: object) -> RpcError:
    if not isinstance(error, Mapping):
        raise RpcProtocolError("an RPC error must be a map with code and message")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise RpcProtocolError("an RPC error needs string code and message")
    return RpcError(code=code, message=_one_line(message))
