"""The HTML pages: server-rendered with Jinja2, each calling the same services as the API.

Pages carry the session's CSRF token in ``<meta name="csrf-token">`` for the page's script to
send back with state-changing requests. ``/login`` is the one page without a session: it swaps
the token from ``parley web``'s link for the session cookie and redirects to the page without it.
"""

from __future__ import annotations

import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.jobs import TASKS, WHISPER_NAMES
from daemon.web.api import guarded
from daemon.web.auth import SESSION_COOKIE, Credentials
from daemon.web.services import error_response, services_of

__all__ = ["page_routes"]

PAGE_SIZE = 50


def _render(request: Request, template: str, context: dict[str, object]) -> Response:
    credentials: Credentials | None = request.scope.get("state", {}).get("credentials")
    csrf = credentials.csrf_token if credentials is not None else None
    response: Response = request.app.state.templates.TemplateResponse(
        request,
        template,
        {"csrf_token": csrf or "", "page": template.removesuffix(".html"), **context},
    )
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def login(request: Request) -> Response:
    auth = services_of(request).auth
    token = request.query_params.get("token", "")
    if not token or not auth.token_matches(token):
        return error_response(
            request, 401, "the login token is wrong; run 'parley web' for a fresh link"
        )
    target = request.query_params.get("next", "/recordings")
    if not target.startswith("/") or target.startswith("//"):
        target = "/recordings"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/recordings", status_code=303)


@guarded
async def recordings_page(request: Request) -> Response:
    services = services_of(request)
    raw = request.query_params.get("page", "1")
    number = int(raw) if raw.isdigit() and 0 < int(raw) <= 10**6 else 1
    page = services.recordings.list(offset=(number - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    return _render(
        request,
        "recordings.html",
        {
            "recordings": [item.as_json() for item in page.items],
            "total": page.total,
            "page_number": number,
            "pages": max(1, -(-page.total // PAGE_SIZE)),
            "max_upload_mb": services.recordings.max_upload_bytes // 2**20,
        },
    )


@guarded
async def player_page(request: Request) -> Response:
    services = services_of(request)
    recording = services.recordings.get(request.path_params["recording_id"]).as_json()
    return _render(
        request,
        "player.html",
        {
            "recording": recording,
            "user_language": services.node.user_language,
            "models": ["default", *services.recordings.model_names()],
            "builtin_whisper": WHISPER_NAMES,
            "tasks": TASKS,
        },
    )


async def calls_page(request: Request) -> Response:
    calls = services_of(request).calls
    return _render(request, "calls.html", {"live": calls.live_calls(), "past": calls.past_calls()})


@guarded
async def call_page(request: Request) -> Response:
    call = services_of(request).calls.describe(request.path_params["call_id"])
    return _render(request, "call.html", {"call": call})


async def node_page(request: Request) -> Response:
    node = services_of(request).node

    def read() -> dict[str, object]:
        # Database reads: in a worker thread, never on the event loop.
        rounds = node.rounds(limit=50)
        return {
            "status": node.status(),
            "peers": node.peers(),
            "rounds": rounds,
            "plot": loss_plot(rounds),
        }

    return _render(request, "node.html", await trio.to_thread.run_sync(read))


def loss_plot(rounds: list[dict[str, object]]) -> dict[str, object]:
    """An inline SVG line of loss after each completed round (oldest left); pure geometry."""
    points = [
        (int(str(item["round"])), float(str(item["loss_after"])))
        for item in reversed(rounds)
        if isinstance(item.get("loss_after"), int | float)
    ]
    width, height, margin = 480, 200, 36
    if not points:
        return {"width": width, "height": height, "points": "", "marks": [], "empty": True}
    losses = [loss for _, loss in points]
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    step = (width - 2 * margin) / max(1, len(points) - 1)
    marks = []
    for index, (number, loss) in enumerate(points):
        x = margin + index * step
        y = height - margin - (loss - low) / span * (height - 2 * margin)
        marks.append({"x": round(x, 1), "y": round(y, 1), "round": number, "loss": loss})
    return {
        "width": width,
        "height": height,
        "margin": margin,
        "points": " ".join(f"{mark['x']},{mark['y']}" for mark in marks),
        "marks": marks,
        "low": low,
        "high": high,
        "empty": False,
    }


def page_routes() -> list[Route]:
    return [
        Route("/", home, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Route("/recordings", recordings_page, methods=["GET"]),
        Route("/recordings/{recording_id}", player_page, methods=["GET"]),
        Route("/calls", calls_page, methods=["GET"]),
        Route("/calls/{call_id}", call_page, methods=["GET"]),
        Route("/node", node_page, methods=["GET"]),
    ]
