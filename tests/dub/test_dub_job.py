"""``dub`` jobs on a real node: submitted over the status RPC, queued like caption jobs, listed by
``jobs`` with their kind, bad requests refused before queueing."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import trio

from daemon.config import Config
from daemon.database import JobStatus, JobStore, open_database
from daemon.home import NodeHome
from daemon.jobs import JobRunner
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.rpc import RpcHandlerError
from daemon.rpc_client import call
from daemon.rpc_handlers import job_methods, node_methods
from daemon.rpc_server import serve_rpc
from media.asr import FeatureTranscriber
from media.translate import TranslationConfig, Translator, select_translator
from simulations.node_helpers import loopback_config, make_home, short_root, wait_for
from tests.speech import whisper_model

pytestmark = pytest.mark.slow


@functools.cache
def translator_for(source: str, target: str) -> Translator:
    return select_translator(source, target, TranslationConfig())


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


def _runner(node: RunningNode) -> JobRunner:
    return JobRunner(
        node.jobs,
        home=node.home,
        config=node.config,
        transcriber_factory=lambda: FeatureTranscriber(whisper_model()),
        translator_factory=translator_for,
    )


def _config() -> Config:
    return loopback_config(name="dubber", mdns=False)


async def test_a_dub_job_runs_on_the_node(material, root: Path) -> None:
    home, _identity = make_home(root, "n")
    socket_path = root / "jobs.sock"
    async with open_node(home, _config(), NodeOptions(listen_port=0)) as node:
        runner = _runner(node)
        async with trio.open_nursery() as nursery:
            handlers = {**job_methods(node), **node_methods(node), **runner.rpc_handlers()}
            await nursery.start(serve_rpc, socket_path, handlers)

            async def rpc(method: str, params: Any = None) -> Any:
                return await call(socket_path, method, params)

            job = await rpc("dub.submit", {"path": str(material["one"]), "to": "pt"})
            assert job["status"] == "pending"
            job_id = str(job["id"])
            # What a node killed mid-dub leaves behind in the job's folder: removed on the rerun.
            stale = home.root / "dubs" / job_id / ".one.pt.mp4.deadbeef.part"
            stale.parent.mkdir(parents=True)
            stale.write_bytes(b"half a file")
            await nursery.start(runner.run)

            def finished() -> bool:
                record = node.jobs.get(job_id)
                return record is not None and record.status in (JobStatus.READY, JobStatus.FAILED)

            await wait_for(finished, timeout=240, what="the dub job")
            listed = {item["id"]: item for item in await rpc("jobs")}
            shown = listed[job_id]
            assert shown["kind"] == "dub" and shown["status"] == "ready", shown
            out = Path(shown["outputs"]["files"]["mp4"])
            assert out.parent == home.root / "dubs" / job_id
            assert out.name == "one.pt.mp4"
            assert sorted(p.name for p in out.parent.iterdir()) == ["one.pt.mp4"]
            assert shown["outputs"]["frames_lip_synced"] > 0
            with av.open(str(out)) as container:
                assert len(container.streams.audio) == 2
                assert len(container.streams.subtitles) == 2
            assert (await rpc("dub.get", {"id": job_id}))["status"] == "ready"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"path": "relative.mp4", "to": "pt"}, "invalid_params"),
        ({"path": "/nonexistent/parley/talk.mp4", "to": "pt"}, "invalid_params"),
        ({"path": "{video}"}, "invalid_params"),
        ({"path": "{video}", "to": "en"}, "invalid_params"),
        ({"path": "{video}", "to": "xh"}, "unsupported_language"),
        ({"path": "{video}", "to": "pt", "out": "relative.mp4"}, "invalid_params"),
        ({"path": "{video}", "to": "pt", "out": "{video}", "force": True}, "invalid_params"),
        ({"path": "{video}", "to": "pt", "out": "{taken}"}, "invalid_params"),
        ({"path": "{video}", "to": "pt", "force": "yes"}, "invalid_params"),
        ({"path": "{video}", "to": "pt", "colour": "blue"}, "invalid_params"),
    ],
)
async def test_dub_submit_validates_before_queueing(
    material, tmp_path: Path, params: dict[str, object], code: str
) -> None:
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"keep")
    filled = {
        key: value.format(video=material["one"], taken=taken) if isinstance(value, str) else value
        for key, value in params.items()
    }
    with open_database(tmp_path / "node.db") as database:
        jobs = JobStore(database)
        runner = JobRunner(
            jobs,
            home=NodeHome(tmp_path),
            config=Config(),
            transcriber_factory=lambda: FeatureTranscriber(whisper_model()),
            translator_factory=translator_for,
        )
        with pytest.raises(RpcHandlerError) as caught:
            await runner.submit_dub(filled)
        assert caught.value.error.code == code
        assert jobs.list() == []
    assert taken.read_bytes() == b"keep"
