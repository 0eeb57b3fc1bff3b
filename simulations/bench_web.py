"""``parley bench web``: the node's web server under a realistic load, on loopback HTTP.

* ``list_p95_ms``: the Recordings page (HTML, 50 a page) of a home holding 1,000 recordings,
  random pages, p95 of the request's wall time (``api_list_p95_ms``: the same for the JSON API).
  The 1,000 entries are bench fixtures: a folder and ``recording.json`` each and a ready job row,
  written directly (captioning 1,000 files would take hours); their media are not real.
* ``sse_delay_p95_ms``: from a final caption reaching the call feed (the call code's own entry
  point, :meth:`daemon.web.call_feed.CallFeed.captions`) to its event arriving at a client
  reading ``/api/calls/{id}/events`` over HTTP in another thread (both stamps are
  ``time.perf_counter``, one clock). Captions are published every 20 ms.
* ``upload_mb_per_s``: one 200 MiB recording (a WAV) posted as multipart, through the size
  limit, the PyAV check and the job submission. The web services here get a job queue of their
  own whose runner does not run, so no caption job loads Whisper in the middle of the figures
  (the node's own queue is the one the tests exercise).
* ``rss_added_mb``: the node process's resident memory with the server started and after all
  of the above, minus the same node's before the server was started (the bench's client
  library is imported before the first reading, so it is not counted).
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import trio

from common.atomic import write_atomic
from daemon.config import Config, render_default_config
from daemon.database import JobStore, open_database
from daemon.home import NodeHome
from daemon.identity import Identity, save_identity
from daemon.jobs import JobRunner
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.web.call_feed import CallFeed
from schemas.messages import CallStart, Caption, CodecSettings, VoiceTraits

RECORDINGS: Final = 1000
LIST_REQUESTS: Final = 200
SSE_EVENTS: Final = 200
SSE_INTERVAL_S: Final = 0.02
UPLOAD_MIB: Final = 200


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _p95_ms(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20)[18] * 1000, 2)


def _seed_recordings(home: NodeHome, jobs: JobStore, count: int) -> None:
    root = home.root / "recordings"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    base_ms = int(time.time() * 1000) - count * 1000
    for index in range(count):
        record = jobs.create(
            kind="caption", input_path=f"/nonexistent/{index}.webm", options={"to": ["pt"]}
        )
        claimed = jobs.claim_next()
        assert claimed is not None and claimed.job_id == record.job_id
        jobs.mark_ready(
            record.job_id,
            outputs={
                "files": {"en.vtt": "/x", "en.srt": "/x", "pt.vtt": "/x", "pt.srt": "/x"},
                "language": "en",
                "cue_count": 3,
                "duration_s": 5.0,
            },
        )
        recording_id = f"{base_ms + index * 1000:012x}" + secrets.token_hex(4)
        folder = root / recording_id
        folder.mkdir(mode=0o700)
        metadata = {
            "id": recording_id,
            "name": f"talk-{index:04d}.webm",
            "created_at": (base_ms + index * 1000) / 1000,
            "size_bytes": 123456,
            "media_type": "video/webm",
            "extension": "webm",
            "duration_s": 5.0,
            "has_video": True,
            "languages": ["pt"],
            "jobs": [record.job_id],
        }
        (folder / "recording.json").write_text(json.dumps(metadata))


def _silent_wav(path: Path, mib: int) -> None:
    frames = mib * 2**20 // 2
    chunk = bytes(2 * 48000)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        written = 0
        while written < frames:
            take = min(48000, frames - written)
            out.writeframes(chunk[: take * 2])
            written += take


def _stand_in_start() -> CallStart:
    return CallStart(
        call_id=1,
        speaker_language="en",
        listener_language="pt",
        codec=CodecSettings("bench", b"\x00" * 32, 16, 4, 50.0),
        voice=VoiceTraits(120.0, 2.5),
    )


def _timed_get(client: Any, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path}: HTTP {response.status_code}")
    return elapsed


async def _bench(root: Path) -> dict[str, object]:
    import httpx  # noqa: F401  (before the first RSS reading: the client is not the server)

    home = NodeHome(root / "node")
    home.create()
    save_identity(Identity.generate(), home.identity_path)
    write_atomic(home.config_path, render_default_config().encode())
    config = (
        Config()
        .replace("listen", host="127.0.0.1")
        .replace("discovery", mdns=False, interfaces=("127.0.0.1",))
        .replace("fl", round_interval_min=0)
        .replace("web", enabled=False, port=0)
    )
    result: dict[str, object] = {}
    # The web services get a job queue of their own (its runner never runs): the bench measures
    # the server, not a caption job picking up the 200 MiB upload and loading Whisper.
    bench_database = open_database(root / "bench-jobs.db")
    bench_jobs = JobStore(bench_database)
    await trio.to_thread.run_sync(_seed_recordings, home, bench_jobs, RECORDINGS)
    try:
        async with open_node(home, config, NodeOptions(listen_port=0)) as node:
            await trio.sleep(0.5)
            rss_before = _rss_mb()
            from daemon.web.app import WebServices, build_app
            from daemon.web.auth import WebAuth, load_or_create_token
            from daemon.web.call_feed import CallFeed
            from daemon.web.node_view import NodeView
            from daemon.web.recordings import RecordingService
            from daemon.web.server import bind_socket, serve_app

            feed = CallFeed(home.root)
            node.call_observers.append(feed)
            token = load_or_create_token(home.root)
            services = WebServices(
                auth=WebAuth(token),
                recordings=RecordingService(
                    home_root=home.root,
                    jobs=bench_jobs,
                    runner=JobRunner(bench_jobs, home=home, config=config),
                    max_upload_bytes=config.web.max_upload_mb * 2**20,
                ),
                node=NodeView(node),
                calls=feed,
            )
            async with trio.open_nursery() as nursery:
                base = await nursery.start(
                    serve_app, build_app(services), bind_socket("127.0.0.1", 0)
                )
                headers = {"Authorization": f"Bearer {token}"}
                stages = {"started": _rss_mb()}
                result.update(await trio.to_thread.run_sync(_list_load, base, headers))
                stages["after_list"] = _rss_mb()
                result.update(await _sse_load(feed, node, base, headers))
                stages["after_sse"] = _rss_mb()
                result.update(await trio.to_thread.run_sync(_upload_load, base, headers, root))
                stages["after_upload"] = _rss_mb()
                rss_after = _rss_mb()
                result["rss_added_by_stage_mb"] = {
                    key: round(value - rss_before, 1) for key, value in stages.items()
                }
                nursery.cancel_scope.cancel()
    finally:
        bench_database.close()
    result["rss_before_mb"] = round(rss_before, 1)
    result["rss_with_server_mb"] = round(rss_after, 1)
    result["rss_added_mb"] = round(rss_after - rss_before, 1)
    return result


def _list_load(base: str, headers: dict[str, str]) -> dict[str, object]:
    import random

    import httpx

    pages = RECORDINGS // 50
    chooser = random.Random(0)
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for _ in range(5):  # warm-up (templates compiled, connection open)
            _timed_get(client, "/recordings")
        page_times = [
            _timed_get(client, f"/recordings?page={chooser.randint(1, pages)}")
            for _ in range(LIST_REQUESTS)
        ]
        api_times = [
            _timed_get(client, f"/api/recordings?offset={chooser.randint(0, pages - 1) * 50}")
            for _ in range(LIST_REQUESTS)
        ]
        total = client.get("/api/recordings?limit=1").json()["total"]
    return {
        "recordings": total,
        "list_p95_ms": _p95_ms(page_times),
        "list_p50_ms": round(statistics.median(page_times) * 1000, 2),
        "api_list_p95_ms": _p95_ms(api_times),
    }


async def _sse_load(
    feed: CallFeed, node: RunningNode, base: str, headers: dict[str, str]
) -> dict[str, object]:
    (node.home.root / "calls" / "1").mkdir(parents=True, exist_ok=True)
    feed.call_started("1", "bench", _stand_in_start())
    arrived: dict[int, float] = {}
    connected = threading.Event()
    done = threading.Event()

    def read_events() -> None:
        import httpx

        with (
            httpx.Client(base_url=base, headers=headers, timeout=60) as client,
            client.stream("GET", "/api/calls/1/events") as stream,
        ):
            connected.set()
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "seq" in data:
                        arrived[data["seq"]] = time.perf_counter()
                if len(arrived) >= SSE_EVENTS or done.is_set():
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, read_events)
        await trio.to_thread.run_sync(connected.wait)
        await trio.sleep(0.3)  # the subscription is in place once the headers came back
        published: dict[int, float] = {}
        voice = VoiceTraits(120.0, 2.5)
        for seq in range(1, SSE_EVENTS + 1):
            caption = Caption(
                seq, seq * 1.0, seq * 1.0 + 0.9, f"caption {seq}", "en", True, (), voice
            )
            published[seq] = time.perf_counter()
            feed.captions("1", [caption], seq * 1.0 + 1.0)
            await trio.sleep(SSE_INTERVAL_S)
        with trio.move_on_after(10):
            while len(arrived) < SSE_EVENTS:
                await trio.sleep(0.05)
        done.set()
        feed.call_ended("1", "completed")
    delays = [arrived[seq] - published[seq] for seq in published if seq in arrived]
    return {
        "sse_events": len(delays),
        "sse_delay_p95_ms": _p95_ms(delays),
        "sse_delay_p50_ms": round(statistics.median(delays) * 1000, 2),
    }


def _upload_load(base: str, headers: dict[str, str], root: Path) -> dict[str, object]:
    import httpx

    path = root / "upload.wav"
    _silent_wav(path, UPLOAD_MIB)
    size = path.stat().st_size

    def chunks() -> Iterator[bytes]:
        boundary = "parleybench"
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        with path.open("rb") as file:
            while block := file.read(1 << 20):
                yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        started = time.perf_counter()
        response = client.post(
            "/api/recordings",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=parleybench"},
        )
        elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"upload: HTTP {response.status_code}: {response.text[:200]}")
    path.unlink()
    return {
        "upload_mib": round(size / 2**20, 1),
        "upload_s": round(elapsed, 3),
        "upload_mb_per_s": round(size / 1e6 / elapsed, 1),
    }


def run(json_path: Path | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="parley-bench-web-", dir="/tmp") as folder:
        result = trio.run(_bench, Path(folder))
    result["goals"] = {
        "list_p95_ms": 100,
        "sse_delay_p95_ms": 50,
        "rss_added_mb": 60,
    }
    result["load"] = f"measured on {os.cpu_count()} CPUs shared with whatever else runs"
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
