"""Helpers for tests that run real nodes: short homes (AF_UNIX paths are limited to 108 bytes),
configs bound to loopback, and waiting for conditions with a deadline."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from common.atomic import write_atomic
from daemon.config import Config, render_default_config
from daemon.home import NodeHome
from daemon.identity import Identity, save_identity
from daemon.node import RunningNode
from handshake.noise import StaticIdentity
from handshake.stream import SessionStream, initiate_session


@contextmanager
def short_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="pt"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_home(root: Path, name: str) -> tuple[NodeHome, Identity]:
    home = NodeHome(root / name)
    home.create()
    identity = Identity.generate()
    save_identity(identity, home.identity_path)
    write_atomic(home.config_path, render_default_config().encode())
    return home, identity


async def initiate_to(
    node: RunningNode, identity: StaticIdentity, stream: trio.abc.Stream | None = None
) -> SessionStream:
    """Our side of a handshake with ``node`` as ``identity``, offering no bundle, over
    ``stream`` (by default a new TCP connection to its loopback port)."""
    if stream is None:
        stream = await trio.open_tcp_stream("127.0.0.1", node.listen_port)
    return await initiate_session(
        stream,
        identity=identity,
        responder_static_public=node.identity.public_key,
        our_hello=node.hello(),
        our_bundle=None,
    )


def loopback_config(
    *, name: str, mdns: bool, static_peers: tuple[str, ...] = (), port: int = 0
) -> Config:
    config = Config()
    config = config.replace("node", name=name)
    if port:
        config = config.replace("listen", host="127.0.0.1", port=port)
    else:
        config = config.replace("listen", host="127.0.0.1")
    config = config.replace(
        "discovery", mdns=mdns, interfaces=("127.0.0.1",), static_peers=static_peers
    )
    config = config.replace("fl", round_interval_min=0)
    # No web page: a test node must not take the user's port 7406 (tests/web enable it, port 0).
    return config.replace("web", enabled=False)


async def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
