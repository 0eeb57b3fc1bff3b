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
import socket
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
LISTEN_BACKLOG = 64


def node_services(node: RunningNode) -> WebServices:
    """The web services for a running node (the call feed is hooked to its calls)."""
    from daemon.web.app import WebServices
    from daemon.web.auth import WebAuth, load_or_create_token
    from daemon.web.call_feed import CallFeed
    from daemon.web.node_view import NodeView
    from daemon.web.recordings import RecordingService

    feed = CallFeed(node.home.root)
    node.call_observers.append(feed)
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


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (raises ``OSError``, leaking nothing)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_app(
    app: Starlette,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sock`` until cancelled; ``started`` gets its base URL."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.config import Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = get_logger("web.server")
    config.graceful_timeout = 1.0
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(worker_serve, wrap_app(app, 0, "asgi"), config, sockets=sockets)  # type: ignore[arg-type]
        )
        task_status.started(binds[0])


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
    try:
        sock = bind_socket(settings.host, port)
    except OSError as error:
        reason = f"cannot listen on {settings.host}:{port}: {error.strerror or error}"
        event(log, logging.WARNING, "web.not_started", reason=reason)
        task_status.started()
        return
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, app, sock)
        node.web_url = url
        event(log, logging.INFO, "web.started", url=url)
        task_status.started()


def _loopback(host: str) -> bool:
    from daemon.config import is_loopback_host

    return is_loopback_host(host)
