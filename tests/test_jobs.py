"""Caption jobs on a real node: submission over the status RPC, the runner next to ``open_node``,
bad files failing alone, queued jobs, crash recovery, and the real tiny.en doing the work."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import srt
import trio

from daemon.config import Config
from daemon.database import JobStatus, JobStore, open_database
from daemon.home import NodeHome
from daemon.jobs import JobRunner, default_transcriber_factory
from daemon.node import NodeOptions, RunningNode, open_node
from daemon.rpc_client import RpcCallError, call
from daemon.rpc_handlers import job_methods, node_methods
from daemon.rpc_server import serve_rpc
from media.asr import FeatureTranscriber, Transcript
from media.caption_file import FeatureDecoder
from media.features import FloatArray
from media.translate import TranslationConfig, Translator, select_translator
from media.wer import wer
from simulations.node_helpers import loopback_config, make_home, short_root, wait_for
from tests.speech import synthesize_speech, whisper_model

pytestmark = pytest.mark.slow

SCRIPT = "Thank you for coming to the meeting today. Please send me the report before Friday."


@functools.cache
def translator_for(source: str, target: str) -> Translator:
    return select_translator(source, target, TranslationConfig())


def shared_transcriber() -> FeatureDecoder:
    return FeatureTranscriber(whisper_model())


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_speech(SCRIPT, tmp_path_factory.mktemp("jobs") / "meeting.wav")


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


def _runner(node: RunningNode, **overrides: object) -> JobRunner:
    settings: dict[str, object] = {
        "transcriber_factory": shared_transcriber,
        "translator_factory": translator_for,
        **overrides,
    }
    return JobRunner(node.jobs, home=node.home, config=node.config, **settings)  # type: ignore[arg-type]


def _node_config() -> Config:
    return loopback_config(name="captioner", mdns=False)


def _finished(node: RunningNode, job_ids: list[str]) -> bool:
    statuses = {job.job_id: job.status for job in node.jobs.list()}
    return all(statuses[job_id] in (JobStatus.READY, JobStatus.FAILED) for job_id in job_ids)


async def test_jobs_over_rpc_bad_file_fails_alone(speech_wav: Path, root: Path) -> None:
    home, _identity = make_home(root, "n")
    corrupt = root / "corrupt.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00garbage" * 200)
    chosen_out = root / "chosen"
    socket_path = root / "jobs.sock"
    async with open_node(home, _node_config(), NodeOptions(listen_port=0)) as node:
        runner = _runner(node)
        async with trio.open_nursery() as nursery:
            # The lead wires these into the node's own socket; here a second socket serves them.
            handlers = {**job_methods(node), **node_methods(node), **runner.rpc_handlers()}
            await nursery.start(serve_rpc, socket_path, handlers)

            async def rpc(method: str, params: dict[str, object] | None = None) -> Any:
                return await call(socket_path, method, params)

            # Three jobs queued before the runner starts: all are taken, in order.
            first = await rpc("caption.submit", {"path": str(speech_wav), "to": ["pt"]})
            bad = await rpc("caption.submit", {"path": str(corrupt)})
            second = await rpc(
                "caption.submit",
                {"path": str(speech_wav), "out_dir": str(chosen_out)},
            )
            assert [job["status"] for job in (first, bad, second)] == ["pending"] * 3
            await nursery.start(runner.run)
            ids = [str(job["id"]) for job in (first, bad, second)]
            await wait_for(lambda: _finished(node, ids), timeout=120, what="three jobs")

            listed = {job["id"]: job for job in await rpc("jobs")}
            got_first, got_bad, got_second = (listed[job_id] for job_id in ids)
            assert got_first["status"] == "ready" and got_second["status"] == "ready"
            assert got_bad["status"] == "failed"
            assert "corrupt.mp3" in got_bad["reason"] and "\n" not in got_bad["reason"]

            # Default output folder: inside the node home, one folder per job.
            files = got_first["outputs"]["files"]
            assert set(files) == {"en.srt", "en.vtt", "pt.srt", "pt.vtt"}
            for path in files.values():
                assert Path(path).parent == home.root / "captions" / ids[0]
            english = list(srt.parse(Path(files["en.srt"]).read_text(encoding="utf-8")))
            text = " ".join(cue.content.replace("\n", " ") for cue in english)
            assert wer(SCRIPT, text) <= 0.15, text
            assert got_first["outputs"]["cue_count"] == len(english)
            pt_cues = list(srt.parse(Path(files["pt.srt"]).read_text(encoding="utf-8")))
            assert pt_cues and pt_cues[0].start == english[0].start

            # A path the user named is used as is.
            assert set(got_second["outputs"]["files"]) == {"en.srt", "en.vtt"}
            assert Path(got_second["outputs"]["files"]["en.vtt"]) == chosen_out / "meeting.en.vtt"

            shown = await rpc("caption.get", {"id": ids[1]})
            assert shown["status"] == "failed" and shown["reason"] == got_bad["reason"]

            # The runner is still alive after a failure: one more job goes through.
            third = await rpc("caption.submit", {"path": str(speech_wav)})
            await wait_for(lambda: _finished(node, [str(third["id"])]), timeout=60, what="job")
            assert node.jobs.get(str(third["id"])).status is JobStatus.READY  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"path": "relative.wav"}, "invalid_params"),
        ({"path": "/nonexistent/parley/talk.wav"}, "invalid_params"),
        ({"path": "{wav}", "to": ["xh"]}, "unsupported_language"),
        ({"path": "{wav}", "to": ["../etc"]}, "invalid_params"),
        ({"path": "{wav}", "to": "pt"}, "invalid_params"),
        ({"path": "{wav}", "out_dir": "relative/out"}, "invalid_params"),
        ({"path": "{wav}", "out_dir": "{wav}"}, "invalid_params"),
        ({"path": "{wav}", "colour": "blue"}, "invalid_params"),
        (["{wav}"], "invalid_params"),
    ],
)
async def test_submit_validates_before_queueing(
    speech_wav: Path, tmp_path: Path, params: object, code: str
) -> None:
    def fill(value: object) -> object:
        if isinstance(value, str):
            return value.replace("{wav}", str(speech_wav))
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return value

    with open_database(tmp_path / "node.db") as database:
        jobs = JobStore(database)
        runner = JobRunner(
            jobs,
            home=NodeHome(tmp_path),
            config=Config(),
            transcriber_factory=shared_transcriber,
            translator_factory=translator_for,
        )
        socket_path = tmp_path / "s.sock"
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_rpc, socket_path, runner.rpc_handlers())
            with pytest.raises(RpcCallError) as caught:
                await call(socket_path, "caption.submit", fill(params))  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
        assert caught.value.code == code
        assert jobs.list() == []


async def test_interrupted_job_is_requeued_and_processed(speech_wav: Path, root: Path) -> None:
    home, _identity = make_home(root, "n")
    # A previous run claimed a job and died: the row is left in ``processing``.
    with open_database(home.database_path) as database:
        jobs = JobStore(database)
        job = jobs.create(kind="caption", input_path=str(speech_wav), options={"to": []})
        assert jobs.claim_next() is not None
    async with open_node(home, _node_config(), NodeOptions(listen_port=0)) as node:
        # The node put it back to pending at start, and its own runner then processed it.
        await wait_for(lambda: _finished(node, [job.job_id]), timeout=60, what="recovery")
        record = node.jobs.get(job.job_id)
        assert record is not None and record.status is JobStatus.READY, record
        assert Path(str(record.outputs["files"]["en.srt"])).is_file()  # type: ignore[index]


class _ExplodingTranscriber:
    """A fake that raises a bug-like error: the runner must record it and carry on."""

    def transcribe_features(self, mel: FloatArray, *, on_progress: object = None) -> Transcript:
        raise KeyError("a bug")


async def test_internal_error_and_missing_model_fail_the_job_only(
    speech_wav: Path, tmp_path: Path
) -> None:
    with open_database(tmp_path / "node.db") as database:
        jobs = JobStore(database)
        # The config refuses a folder that does not exist, so the model goes after it is read
        # (a folder deleted while the node runs).
        (tmp_path / "no-model").mkdir()
        broken_config = Config().replace("models", whisper_dir=str(tmp_path / "no-model"))
        (tmp_path / "no-model").rmdir()
        missing_model = JobRunner(
            jobs,
            home=NodeHome(tmp_path),
            config=broken_config,
            translator_factory=translator_for,
            poll_interval_s=0.05,
        )
        exploding = JobRunner(
            jobs,
            home=NodeHome(tmp_path),
            config=Config(),
            transcriber_factory=_ExplodingTranscriber,
            translator_factory=translator_for,
            poll_interval_s=0.05,
        )
        for runner in (missing_model, exploding):
            job = await runner.submit({"path": str(speech_wav)})
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                await wait_for(
                    lambda: runner.jobs_finished == 1,  # noqa: B023
                    timeout=30,
                    what="the job",
                )
                nursery.cancel_scope.cancel()
            record = jobs.get(str(job["id"]))
            assert record is not None and record.status is JobStatus.FAILED
            assert record.reason is not None and "\n" not in record.reason
        failed = jobs.list(status=JobStatus.FAILED)
        assert "no-model" in str(failed[0].reason)
        assert str(failed[1].reason).startswith("internal error: KeyError")
        assert not (tmp_path / "captions").exists()


def test_default_transcriber_factory_loads_the_embedded_model() -> None:
    transcriber = default_transcriber_factory(Config())()
    assert isinstance(transcriber, FeatureTranscriber)


class _GatedTranscriber:
    """The real transcriber, held at a gate so the test can cancel the runner mid-job."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def transcribe_features(self, mel: FloatArray, *, on_progress: object = None) -> Transcript:
        self.entered.set()
        self.release.wait(30)
        try:
            return shared_transcriber().transcribe_features(mel)
        finally:
            self.returned.set()


async def test_cancelled_runner_leaves_the_job_for_recovery(
    speech_wav: Path, tmp_path: Path
) -> None:
    gated = _GatedTranscriber()
    with open_database(tmp_path / "node.db") as database:
        jobs = JobStore(database)
        runner = JobRunner(
            jobs,
            home=NodeHome(tmp_path),
            config=Config(),
            transcriber_factory=lambda: gated,
            translator_factory=translator_for,
        )
        job = await runner.submit({"path": str(speech_wav)})
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await wait_for(gated.entered.is_set, timeout=30, what="the worker")
            nursery.cancel_scope.cancel()  # returns at once: the worker is not waited for
        assert jobs.get(str(job["id"])).status is JobStatus.PROCESSING  # type: ignore[union-attr]
        assert runner.progress is None
        gated.release.set()
        await wait_for(gated.returned.is_set, timeout=30, what="the worker to finish its slice")
        await trio.sleep(0.5)
        # The worker stopped at its next progress report: no files, job still for recovery.
        assert not (tmp_path / "captions").exists()
        assert jobs.recover_interrupted() == 1


async def test_a_full_disk_fails_the_job_with_a_clear_reason_with_stand_in_enospc_writer(
    speech_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stand-in: the caption writer raises ENOSPC (a real disk is not filled here)."""
    import errno

    def no_space(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("media.caption_file.write_atomic", no_space)
    with open_database(tmp_path / "node.db") as database:
        jobs = JobStore(database)
        runner = JobRunner(
            jobs,
            home=NodeHome(tmp_path),
            config=Config(),
            transcriber_factory=shared_transcriber,
            translator_factory=translator_for,
            poll_interval_s=0.05,
        )
        job = await runner.submit({"path": str(speech_wav)})
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await wait_for(lambda: runner.jobs_finished == 1, timeout=60, what="the job")
            nursery.cancel_scope.cancel()
        record = jobs.get(str(job["id"]))
    assert record is not None and record.status is JobStatus.FAILED
    assert str(record.reason).startswith("disk full: "), record.reason
    assert "No space left on device" in str(record.reason)
