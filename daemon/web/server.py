"""Serving the web app inside ``parley node``, on Hypercorn's trio worker.

Why Hypercorn + Starlette: the node is a trio program, and Hypercorn is the ASGI server with a
native trio worker (uvicorn runs only on asyncio, which would need a second event loop in a
second thread); Starlette runs on anyio, so on trio as it is, gives routing, streaming bodies,
Range-aware file responses and Jinja2 templates without a framework's object model, and its
apps test in-process with ``httpx.ASGITransport``.

The server is one more task in the node's nursery. A port already in use (or any other failure to
bind) is logged and the node runs on without its page: the page is a convenience, never a reason
for a node to be down.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import trio

from daemon.logs import event, get_logger

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from daemon.node import RunningNode
    from daemon.web.app import WebServices

__all__ = ["node_services", "serve_app", "serve_node_web"]

log = get_logger("web")


def node_services(node: RunningNode) -> WebServices:
    """The web services for a running node (the call feed is hooked to its calls)."""
    from daemon.web.app import WebServices
    from daemon.web.auth import WebAuth, load_or_create_token
    from daemon.web.call_feed import CallFeed
    from daemon.web.node_view import NodeView
    from daemon.web.recordings import RecordingService

    feed = CallFeed(node.home.root)
    if node.call_service is not None:
        node.call_service.observers.append(feed)
    return WebServices(
        auth=WebAuth(load_or_create_token(node.home.root)),
        recordings=RecordingService(
            home_root=node.home.root,
            jobs=node.jobs,
            runner=node.job_runner,
            max_upload_bytes=node.config.web.max_upload_mb * 2**20,
        ),
        node=NodeView(node),
        calls=feed,
    )


async def serve_app(
    app: Starlette,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started`` gets its base URL."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = get_logger("web.server")
    config.graceful_timeout = 1.0
    # Uploads stream through the app, which enforces its own limit (web.max_upload_mb).
    config.h11_max_incomplete_size = 64 * 1024
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(partial(serve, app, config, mode="asgi"))  # type: ignore[arg-type]
        except BaseExceptionGroup as group:
            # Hypercorn binds inside its own nursery: a bind failure arrives wrapped.
            leaf = _only_leaf(group)
            if isinstance(leaf, OSError):
                raise leaf from None
            raise
        task_status.started(binds[0] if binds else f"http://{host}:{port}")


def _only_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def serve_node_web(
    node: RunningNode,
    port_override: int | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The node's web page at ``web.host:web.port``; see the module docstring."""
    from daemon.web.app import build_app
    from daemon.web.auth import TokenFileError

    settings = node.config.web
    try:
        app = build_app(node_services(node))
    except (TokenFileError, OSError) as error:
        event(log, logging.ERROR, "web.not_started", reason=str(error))
        task_status.started()
        return
    port = settings.port if port_override is None else port_override
    if settings.allow_remote and not _loopback(settings.host):
        event(
            log,
            logging.WARNING,
            "web.remote",
            host=settings.host,
            reason="the page is reachable from the network (web.allow_remote = true)",
        )
    async with trio.open_nursery() as nursery:
        try:
            url = await nursery.start(serve_app, app, settings.host, port)
        except OSError as error:
            event(log, logging.WARNING, "web.not_started", reason=str(error))
            task_status.started()
            return
        node.web_url = url
        event(log, logging.INFO, "web.started", url=url)
        task_status.started()


def _loopback(host: str) -> bool:
    from daemon.config import is_loopback_host

    return is_loopback_host(host)
