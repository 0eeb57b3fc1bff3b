"""The JSON API under ``/api``: thin handlers that parse, call a service, and render.

Described for clients in :mod:`daemon.web.openapi` (served at ``/api/openapi.json``); a test
checks that every route here is described there and the other way round.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Final

import trio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from daemon.web.call_feed import UnknownCallError
from daemon.web.caption_choice import RegenerateChoice, parse_regenerate_choice
from daemon.web.node_view import UnknownPeerRequestError
from daemon.web.recordings import RecordingError, RecordingsRefusedError
from daemon.web.services import error_response, services_of
from daemon.web.upload import UploadError

__all__ = ["SSE_KEEPALIVE_S", "api_routes"]

SERVICE_ERRORS: Final = (RecordingError, UploadError, UnknownCallError, UnknownPeerRequestError)
#: A comment line this often keeps proxies and browsers from closing a quiet event stream.
SSE_KEEPALIVE_S: Final = 15.0
MAX_JSON_BODY: Final = 16 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """Service errors become their HTTP status with the one-line reason."""

    @wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except SERVICE_ERRORS as error:
            return error_response(request, error.status, str(error))

    return run


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RecordingError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise RecordingError(f"{name} must be {low}..{high}")
    return value


# -- recordings ---------------------------------------------------------------------------------


@guarded
async def list_recordings(request: Request) -> Response:
    offset = _int_query(request, "offset", 0, 0, 10**9)
    limit = _int_query(request, "limit", 50, 1, 200)
    return JSONResponse(services_of(request).recordings.list(offset=offset, limit=limit).as_json())


@guarded
async def upload_recording(request: Request) -> Response:
    length = request.headers.get("content-length")
    recording = await services_of(request).recordings.upload(
        request.headers.get("content-type", ""),
        request.stream(),
        content_length=int(length) if length is not None and length.isdigit() else None,
    )
    return JSONResponse(recording.as_json(), status_code=201)


@guarded
async def get_recording(request: Request) -> Response:
    recording = services_of(request).recordings.get(request.path_params["recording_id"])
    return JSONResponse(recording.as_json())


@guarded
async def caption_status(request: Request) -> Response:
    recording = services_of(request).recordings.get(request.path_params["recording_id"])
    shown = recording.as_json()
    keys = ("id", "job_id", "status", "progress", "stage", "language", "languages", "reason")
    return JSONResponse({key: shown[key] for key in keys})


@guarded
async def get_captions(request: Request) -> Response:
    service = services_of(request).recordings
    recording_id = request.path_params["recording_id"]
    language = request.query_params.get("lang") or service.get(recording_id).language or ""
    caption_format = request.query_params.get("format", "vtt")
    text, media_type = service.captions(recording_id, language, caption_format)
    headers = {}
    if request.query_params.get("download"):
        extension = caption_format
        headers["Content-Disposition"] = (
            f'attachment; filename="{recording_id}.{language}.{extension}"'
        )
    return Response(text, media_type=media_type, headers=headers)


@guarded
async def regenerate_captions(request: Request) -> Response:
    body = await request.body()
    choice = RegenerateChoice()
    if body:
        if len(body) > MAX_JSON_BODY:
            raise RecordingsRefusedError("the request body is too large")
        try:
            document = json.loads(body)
        except ValueError:
            raise RecordingError(
                'the body must be JSON like {"languages": ["pt"], "model": "base.en"}'
            ) from None
        choice = parse_regenerate_choice(document)
    recording = await services_of(request).recordings.regenerate(
        request.path_params["recording_id"],
        choice.languages,
        model=choice.model,
        options=choice.job_options(),
    )
    return JSONResponse(recording.as_json(), status_code=202)


async def list_models(request: Request) -> Response:
    return JSONResponse({"models": ["default", *services_of(request).recordings.model_names()]})


@guarded
async def get_media(request: Request) -> Response:
    path, media_type = services_of(request).recordings.media(request.path_params["recording_id"])
    # FileResponse answers Range requests (206 with Content-Range), so the player can seek.
    return FileResponse(path, media_type=media_type)


# -- the node -------------------------------------------------------------------------------------


async def get_status(request: Request) -> Response:
    return JSONResponse(await trio.to_thread.run_sync(services_of(request).node.status))


async def get_peers(request: Request) -> Response:
    return JSONResponse(await trio.to_thread.run_sync(services_of(request).node.peers))


@guarded
async def get_rounds(request: Request) -> Response:
    limit = _int_query(request, "limit", 50, 1, 1000)
    rounds = functools.partial(services_of(request).node.rounds, limit=limit)
    return JSONResponse(await trio.to_thread.run_sync(rounds))


@guarded
async def trust_peer(request: Request) -> Response:
    set_trust = functools.partial(
        services_of(request).node.set_trust, request.path_params["peer_id"], trusted=True
    )
    peer = await trio.to_thread.run_sync(set_trust)
    return JSONResponse(peer)


@guarded
async def untrust_peer(request: Request) -> Response:
    set_trust = functools.partial(
        services_of(request).node.set_trust, request.path_params["peer_id"], trusted=False
    )
    peer = await trio.to_thread.run_sync(set_trust)
    return JSONResponse(peer)


# -- calls ----------------------------------------------------------------------------------------


async def list_calls(request: Request) -> Response:
    calls = services_of(request).calls
    return JSONResponse({"live": calls.live_calls(), "past": calls.past_calls()})


@guarded
async def get_call(request: Request) -> Response:
    return JSONResponse(services_of(request).calls.describe(request.path_params["call_id"]))


@guarded
async def get_call_captions(request: Request) -> Response:
    path, media_type = services_of(request).calls.track(
        request.path_params["call_id"],
        request.query_params.get("lang", ""),
        request.query_params.get("format", "vtt"),
    )
    return FileResponse(path, media_type=media_type)


@guarded
async def get_call_audio(request: Request) -> Response:
    path, media_type = services_of(request).calls.audio(request.path_params["call_id"])
    return FileResponse(path, media_type=media_type)


@guarded
async def call_events(request: Request) -> Response:
    feed = services_of(request).calls
    subscription = feed.subscribe(request.path_params["call_id"])  # 404 before any byte

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": parley call events\n\n"
            while True:
                with trio.move_on_after(SSE_KEEPALIVE_S) as quiet:
                    try:
                        event = await subscription.events.receive()
                    except trio.EndOfChannel:
                        return
                if quiet.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                yield event.encode()
        finally:
            subscription.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def openapi(request: Request) -> Response:
    from daemon.web.openapi import openapi_document

    return JSONResponse(openapi_document())


def api_routes() -> list[Route]:
    return [
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/status", get_status, methods=["GET"]),
        Route("/api/peers", get_peers, methods=["GET"]),
        Route("/api/peers/{peer_id}/trust", trust_peer, methods=["POST"]),
        Route("/api/peers/{peer_id}/untrust", untrust_peer, methods=["POST"]),
        Route("/api/rounds", get_rounds, methods=["GET"]),
        Route("/api/calls", list_calls, methods=["GET"]),
        Route("/api/calls/{call_id}", get_call, methods=["GET"]),
        Route("/api/calls/{call_id}/events", call_events, methods=["GET"]),
        Route("/api/calls/{call_id}/captions", get_call_captions, methods=["GET"]),
        Route("/api/calls/{call_id}/audio", get_call_audio, methods=["GET"]),
        Route("/api/models", list_models, methods=["GET"]),
        Route("/api/recordings", list_recordings, methods=["GET"]),
        Route("/api/recordings", upload_recording, methods=["POST"]),
        Route("/api/recordings/{recording_id}", get_recording, methods=["GET"]),
        Route("/api/recordings/{recording_id}/captions", get_captions, methods=["GET"]),
        Route("/api/recordings/{recording_id}/captions/status", caption_status, methods=["GET"]),
        Route(
            "/api/recordings/{recording_id}/captions/regenerate",
            regenerate_captions,
            methods=["POST"],
        ),
        Route("/api/recordings/{recording_id}/media", get_media, methods=["GET"]),
    ]
