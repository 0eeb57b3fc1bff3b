"""The web server inside a real node over real HTTP (Hypercorn on loopback): ``parley web``'s
link logs a browser in, the call feed streams server-sent events as captions are published, a
busy port leaves the node running without a page; trust actions and the Node page in-process."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from daemon.cli import main
from daemon.database import PeerSource, RoundStatus
from daemon.node import NodeOptions, open_node
from daemon.rpc_client import call as rpc_call
from daemon.web.call_feed import CallFeed
from daemon.web.pages import loss_plot
from schemas.messages import CallStart, Caption, CodecSettings, VoiceTraits, WordTime
from simulations.node_helpers import make_home, short_root
from tests.web.helpers import log_in, open_web_node, web_config


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


def _stand_in_start(call_id: int = 7) -> CallStart:
    return CallStart(
        call_id=call_id,
        speaker_language="en",
        listener_language="pt",
        codec=CodecSettings("arch", b"\x00" * 32, 16, 4, 50.0),
        voice=VoiceTraits(120.0, 2.5),
    )


def _caption(seq: int, text: str, language: str, *, final: bool, end_s: float) -> Caption:
    return Caption(
        seq=seq,
        start_s=end_s - 1.0,
        end_s=end_s,
        text=text,
        language=language,
        final=final,
        words=(WordTime(text.split(maxsplit=1)[0], end_s - 1.0, end_s - 0.5),),
        voice=VoiceTraits(120.0, 2.5),
    )


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as done:
            code = int(done.code or 0)
    return code, out.getvalue(), err.getvalue()


async def test_parley_web_link_logs_in_over_http_and_events_stream(root: Path) -> None:
    home, _ = make_home(root, "n")
    config = web_config(enabled=True)
    async with open_node(home, config, NodeOptions(listen_port=0, web_port=0)) as node:
        assert node.web_url is not None and node.web_url.startswith("http://127.0.0.1:")
        assert (await rpc_call(home.socket_path, "web.info"))["url"] == node.web_url
        code, out, _ = await trio.to_thread.run_sync(_run_cli, "web", "--home", str(home.root))
        assert code == 0
        link = out.strip()
        assert link.startswith(f"{node.web_url}/login?token=")
        feed = node.call_observers[0]
        assert isinstance(feed, CallFeed)
        async with httpx.AsyncClient() as client:
            response = await client.get(link)
            assert response.status_code == 303
            assert "parley_session" in client.cookies
            status = await client.get(f"{node.web_url}/api/status")
            assert status.status_code == 200
            assert status.json()["web_url"] == node.web_url

            feed.call_started("7", "caller", _stand_in_start())
            feed.captions("7", [_caption(1, "hello there", "en", final=True, end_s=2.0)], 2.4)
            received: list[tuple[str, dict]] = []
            async with client.stream("GET", f"{node.web_url}/api/calls/7/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async with contextlib.aclosing(stream.aiter_lines()) as lines:
                    kind = None

                    async def next_event() -> tuple[str, dict]:
                        nonlocal kind
                        async for line in lines:
                            if line.startswith("event: "):
                                kind = line.removeprefix("event: ")
                            elif line.startswith("data: "):
                                assert kind is not None
                                return kind, json.loads(line.removeprefix("data: "))
                        raise AssertionError("the stream ended")

                    received.append(await next_event())  # started
                    received.append(await next_event())  # the backlog's final caption
                    published_at = time.perf_counter()
                    partial = _caption(2, "partial wo", "en", final=False, end_s=3.0)
                    feed.captions("7", [partial], 3.1)
                    received.append(await next_event())
                    delay = time.perf_counter() - published_at
                    final = _caption(2, "olá pessoal", "pt", final=True, end_s=3.0)
                    feed.captions("7", [final], 3.5)
                    received.append(await next_event())
                    feed.call_ended("7", "completed")
                    received.append(await next_event())
                    # The server ends the stream after "ended": read it to its end.
                    assert [line async for line in lines if line.startswith("data")] == []
        assert [kind for kind, _ in received] == [
            "started",
            "caption",
            "caption",
            "caption",
            "ended",
        ]
        assert received[1][1]["text"] == "hello there"
        assert received[1][1]["latency_s"] == pytest.approx(0.4)
        assert received[2][1]["final"] is False
        assert received[3][1]["role"] == "translation" and received[3][1]["language"] == "pt"
        assert received[4][1]["reason"] == "completed"
        assert delay < 5.0  # generous: this checks the event arrives live, not how fast


async def test_node_tells_its_caller_where_the_page_is(root: Path) -> None:
    home, _ = make_home(root, "n")
    shown: list[str | None] = []
    options = NodeOptions(
        listen_port=0, web_port=0, on_web_started=lambda n: shown.append(n.web_url)
    )
    async with open_node(home, web_config(enabled=True), options) as node:
        assert shown == [node.web_url]
        assert node.web_url is not None


async def test_a_busy_port_leaves_the_node_running_without_a_page(root: Path) -> None:
    home, _ = make_home(root, "n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = web_config(enabled=True)
        async with open_node(home, config, NodeOptions(listen_port=0, web_port=port)) as node:
            assert node.web_url is None
            assert node.status()["node_id"] == node.peer_id
            code, _, err = await trio.to_thread.run_sync(_run_cli, "web", "--home", str(home.root))
            assert code == 2
            assert "serves no web page" in err


async def test_trust_and_untrust_a_peer_from_the_api(root: Path) -> None:
    async with open_web_node(root) as web:
        key = bytes(range(32))
        web.node.peers.observe(
            key, name="alice", address=("127.0.0.1", 9), source=PeerSource.STATIC
        )
        peer_id = web.node.peer_list()[0]["id"]
        csrf = await log_in(web)
        trusted = await web.client.post(
            f"/api/peers/{peer_id}/trust", headers={"X-CSRF-Token": csrf}
        )
        assert trusted.status_code == 200
        assert trusted.json()["trust"] == "trusted"
        assert web.node.peers.get(key).trust.value == "trusted"
        untrusted = await web.client.post(
            f"/api/peers/{peer_id}/untrust", headers={"X-CSRF-Token": csrf}
        )
        assert untrusted.json()["trust"] != "trusted"
        unknown = await web.client.post(
            f"/api/peers/{'a' * 52}/trust", headers={"X-CSRF-Token": csrf}
        )
        assert unknown.status_code == 404
        page = await web.client.get("/node")
        assert "alice" in page.text and 'data-action="trust"' in page.text


async def test_node_page_plots_loss_per_round(root: Path) -> None:
    async with open_web_node(root) as web:
        for loss in (0.9, 0.7, 0.8):
            record = web.node.rounds.begin(alpha=0.7, peers=["x"])
            web.node.rounds.finish(
                record.round_number,
                status=RoundStatus.COMPLETED,
                peers=["x"],
                n=2,
                loss_before=loss + 0.1,
                loss_after=loss,
                record={},
            )
        rounds = (await web.client.get("/api/rounds", headers=web.auth_headers())).json()
        assert [r["loss_after"] for r in rounds] == [0.8, 0.7, 0.9]
        plot = loss_plot(rounds)
        ys = [mark["y"] for mark in plot["marks"]]
        # Oldest left; the highest loss (0.9) is drawn highest (smallest y), the lowest lowest.
        assert [mark["round"] for mark in plot["marks"]] == [1, 2, 3]
        assert ys[0] < ys[2] < ys[1]
        await log_in(web)
        page = await web.client.get("/node")
        assert f'points="{plot["points"]}"' in page.text
        assert page.text.count("<circle") == 3
