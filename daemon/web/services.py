"""What every route stands on: the typed services, and the one shape of an error response.

Split from :mod:`daemon.web.app` so the route modules (:mod:`daemon.web.api`,
:mod:`daemon.web.pages`) and the app that mounts them do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from daemon.web.auth import WebAuth
from daemon.web.call_feed import CallFeed
from daemon.web.node_view import NodeView
from daemon.web.recordings import RecordingService


@dataclass(frozen=True, slots=True, kw_only=True)
class WebServices:
    """Everything the routes call; each is also usable (and tested) alone."""

    auth: WebAuth
    recordings: RecordingService
    node: NodeView
    calls: CallFeed


def services_of(request: Request) -> WebServices:
    services: WebServices = request.app.state.services
    return services


def error_response(request: Request, status: int, message: str) -> Response:
    code = HTTPStatus(status).phrase.lower().replace(" ", "_")
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        headers = {"WWW-Authenticate": 'Bearer realm="parley"'} if status == 401 else None
        return JSONResponse(
            {"error": {"code": code, "message": message}}, status_code=status, headers=headers
        )
    templates = request.app.state.templates
    page: Response = templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message, "csrf_token": ""},
        status_code=status,
    )
    return page
