"""Helpers for the web tests: a real node with its web app, a recording made with ffmpeg."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from daemon.config import Config
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.web.app import WebServices, build_app
from daemon.web.auth import SESSION_COOKIE
from daemon.web.server import node_services
from simulations.node_helpers import loopback_config, make_home, wait_for
from tests.speech import run_ffmpeg, synthesize_speech

# Tuning and evaluation apart: this sentence is only a test fixture, nothing is tuned on it.
SCRIPT = "Good morning everyone. The train leaves the station at nine o'clock."


def make_recording(folder: Path, *, seconds: float | None = None) -> Path:
    """Synthesized speech (espeak-ng) over ffmpeg's test pattern, as WebM (VP8 + Opus)."""
    speech = synthesize_speech(SCRIPT, folder / "speech.wav")
    out = folder / "talk.webm"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15",
        "-i", str(speech),
        "-shortest", "-c:v", "libvpx", "-b:v", "200k", "-deadline", "realtime",
        "-c:a", "libopus", "-b:a", "48k", str(out),
    )  # fmt: skip
    return out


@functools.cache
def web_config(*, enabled: bool = False, max_upload_mb: int = 1024) -> Config:
    config = loopback_config(name="webnode", mdns=False)
    return config.replace("web", enabled=enabled, port=0, max_upload_mb=max_upload_mb)


@dataclass
class WebNode:
    node: RunningNode
    services: WebServices
    client: httpx.AsyncClient
    token: str

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@asynccontextmanager
async def open_web_node(
    root: Path, *, config: Config | None = None, name: str = "n"
) -> AsyncIterator[WebNode]:
    """A real node (real job queue) and its web app, reached in-process over httpx's ASGI
    transport; the client is not logged in."""
    home, _identity = make_home(root, name)
    async with open_node(home, config or web_config(), NodeOptions(listen_port=0)) as node:
        services = node_services(node)
        app = build_app(services)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            token = (home.root / "web-token").read_text().strip()
            yield WebNode(node, services, client, token)


async def log_in(web: WebNode) -> str:
    """Log the client in through /login; returns the session's CSRF token."""
    response = await web.client.get(f"/login?token={web.token}")
    assert response.status_code == 303, response.text
    assert SESSION_COOKIE in web.client.cookies
    page = await web.client.get("/recordings")
    marker = 'name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


async def wait_until_finished(web: WebNode, recording_id: str, *, timeout: float) -> dict:
    seen: dict = {}

    def finished() -> bool:
        return seen.get("status") in ("ready", "failed")

    async def poll() -> None:
        while not finished():
            response = await web.client.get(
                f"/api/recordings/{recording_id}", headers=web.auth_headers()
            )
            seen.clear()
            seen.update(response.json())
            if not finished():
                await trio.sleep(0.2)

    with trio.move_on_after(timeout):
        await poll()
    await wait_for(finished, timeout=0.01, what=f"recording {recording_id} to finish")
    return seen
