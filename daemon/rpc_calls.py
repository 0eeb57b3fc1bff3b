"""The RPC methods for calls: ``call.place``, ``call.list``, ``call.answer``, ``call.hangup``.

Thin (STYLE.md 20): each parses its params, calls the call service, and returns the typed
live-call view as a dict (:meth:`daemon.call_registry.LiveCall.as_dict`). A call placed here
runs in the node's nursery, so it outlives the request; the CLI polls ``call.list`` with
``since`` (the last caption index it has) to show captions live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from daemon.call_errors import CallError
from daemon.call_registry import LiveCall
from daemon.rpc import RpcHandlerError
from media.call_protocol import CallRole, CallState
from media.errors import MediaError

if TYPE_CHECKING:
    from daemon.call_node import CallNode
    from daemon.calls import CallService

__all__ = ["call_methods"]

Handler = Callable[[Any], Awaitable[object]]


def _text(params: Any, name: str, *, required: bool = True, default: str = "") -> str:
    value = params.get(name, default) if isinstance(params, Mapping) else default
    if not isinstance(value, str) or (required and not value) or len(value) > 4096:
        raise RpcHandlerError("bad_params", f"{name} must be a non-empty string")
    return value


def _int(params: Any, name: str, default: int | None = None) -> int:
    value = params.get(name, default) if isinstance(params, Mapping) else default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RpcHandlerError("bad_params", f"{name} must be a non-negative integer")
    return value


def call_methods(node: CallNode) -> dict[str, Handler]:
    """The call methods for ``node``'s RPC server (one entry of ``daemon.node.RPC_METHODS``);
    calls it places run in the call service's own nursery
    (:meth:`daemon.calls.CallService.serve_placed_calls`)."""

    def service() -> CallService:
        if node.call_service is None:
            raise RpcHandlerError("no_calls", "this node does not serve calls")
        return node.call_service

    def live_call(params: Any) -> LiveCall:
        call_id = _int(params, "call_id")
        call = service().live.get(call_id)
        if call is None:
            raise RpcHandlerError("no_such_call", f"no call {call_id} on this node")
        return call

    async def place(params: Any) -> object:
        from daemon.call_placing import PlaceRequest, start_call

        calls = service()
        request = PlaceRequest(
            peer=_text(params, "peer"),
            listener_language=_text(params, "lang"),
            speaker_language=_text(params, "from", required=False) or node.config.call.language,
            input=_text(params, "in", required=False) or node.config.call.input,
        )
        if calls.placed_calls is None:
            raise RpcHandlerError("no_calls", "this node does not place calls")
        try:
            call = await start_call(calls.placed_calls, node, calls, request)
        except (CallError, MediaError) as error:
            raise RpcHandlerError("call_refused", str(error)) from None
        return call.as_dict()

    async def listing(params: Any) -> object:
        if isinstance(params, Mapping) and "call_id" in params:
            return [live_call(params).as_dict(since=_int(params, "since", 0))]
        return [call.as_dict() for call in service().live.calls()]

    async def answer(params: Any) -> object:
        call = live_call(params)
        if call.role is not CallRole.CALLEE or call.state is not CallState.RINGING:
            raise RpcHandlerError(
                "not_ringing", f"call {call.call_id} is {call.state.value}, not ringing here"
            )
        call.answer.set()
        return call.as_dict()

    async def hang_up(params: Any) -> object:
        call = live_call(params)
        if call.summary is not None:
            raise RpcHandlerError("ended", f"call {call.call_id} has ended")
        call.hang_up.set()
        return call.as_dict()

    return {
        "call.place": place,
        "call.list": listing,
        "call.answer": answer,
        "call.hangup": hang_up,
    }
