"""The web application: services wired to routes, behind the login check.

:func:`build_app` takes the typed services (:class:`WebServices`) and returns a Starlette app.
:class:`AuthMiddleware` runs before every route but ``/login``: a request must carry the session
cookie or a bearer token (else 401), and a state-changing one from a session must carry its CSRF
token (else 403). Each service error carries its HTTP status; :func:`error_response` turns it
into ``{"error": {"code", "message"}}`` for the API, or a short page for a browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.web.api import api_routes
from daemon.web.auth import CSRF_HEADER, SESSION_COOKIE, Credentials, WebAuth
from daemon.web.pages import page_routes
from daemon.web.services import WebServices, error_response

__all__ = ["AuthMiddleware", "WebServices", "build_app", "error_response"]

STATIC_DIR: Final = Path(__file__).parent / "static"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS: Final = frozenset({"/login"})


class AuthMiddleware:
    """Pure ASGI middleware (it does not buffer bodies: uploads and event streams pass as they
    come). Puts the request's :class:`Credentials` in ``scope["state"]["credentials"]``."""

    def __init__(self, app: ASGIApp, auth: WebAuth) -> None:
        self._app = app
        self._auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        credentials = self._credentials(request)
        if credentials is None:
            has_any = SESSION_COOKIE in request.cookies or "authorization" in request.headers
            message = (
                "the login token is wrong; run 'parley web' for a fresh link"
                if has_any
                else "log in first: run 'parley web' and open the link it prints"
            )
            response = self._error(request, 401, message)
            await response(scope, receive, send)
            return
        if request.method not in SAFE_METHODS and not self._auth.csrf_ok(
            credentials, request.headers.get(CSRF_HEADER)
        ):
            response = self._error(request, 403, "missing or wrong CSRF token; reload the page")
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["credentials"] = credentials
        await self._app(scope, receive, send)

    def _credentials(self, request: Request) -> Credentials | None:
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return self._auth.check_bearer(authorization)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None:
            return self._auth.check_session(cookie)
        return None

    def _error(self, request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get(
            "accept", ""
        ):
            return error_response(request, status, message)
        return HTMLResponse(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<title>parley: log in</title></head><body><main><h1>parley</h1>"
            f"<p>{status}: {message}</p></main></body></html>",
            status_code=status,
        )


def build_app(services: WebServices) -> Starlette:
    from starlette.middleware import Middleware
    from starlette.templating import Jinja2Templates

    app = Starlette(
        routes=[
            *page_routes(),
            *api_routes(),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(AuthMiddleware, auth=services.auth)],
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.services = services
    app.state.templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(request, 404, "not found")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(request, 405, "method not allowed")
