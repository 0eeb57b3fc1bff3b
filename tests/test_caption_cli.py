"""``parley caption``: standalone with a progress bar, and as a job on a node that answers on the
home's socket (served from a thread here, the way a separate ``parley node`` process would)."""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import srt
import trio

# typer 0.20 reaches for a helper click 8.5 deprecates: importing it warns (an error under this
# suite's filterwarnings), and the warning is about typer, not about parley.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import typer
    from typer.testing import CliRunner

    from daemon.caption_cli import caption_command
    from daemon.cli import UserError
from daemon.config import Config
from daemon.database import JobStatus, JobStore, open_database
from daemon.home import NodeHome
from daemon.jobs import JobRunner
from daemon.rpc_server import serve_rpc
from media.asr import FeatureTranscriber
from media.caption_file import FeatureDecoder
from media.translate import TranslationConfig, Translator, select_translator
from media.wer import wer
from simulations.node_helpers import short_root
from tests.speech import synthesize_speech, whisper_model

pytestmark = pytest.mark.slow

SCRIPT = "Thank you for coming to the meeting today. Please send me the report before Friday."

# The lead registers the command on the real app; a small app of its own tests it here.
app = typer.Typer()
app.command("caption")(caption_command)


@app.command("noop")
def _noop() -> None:
    """A second command, so that ``caption`` is a subcommand as on the real app."""


@functools.cache
def translator_for(source: str, target: str) -> Translator:
    return select_translator(source, target, TranslationConfig())


def shared_transcriber() -> FeatureDecoder:
    return FeatureTranscriber(whisper_model())


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_speech(SCRIPT, tmp_path_factory.mktemp("cli") / "memo.wav")


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, ["caption", *args])
    return result.exit_code, result.stdout, result.exception


@contextmanager
def node_in_thread(home: NodeHome, *, with_jobs: bool) -> Iterator[JobStore]:
    """A job store, runner and RPC socket on ``home`` in a trio run of its own thread."""
    home.create()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        with open_database(home.database_path) as database:
            jobs = JobStore(database)
            runner = JobRunner(
                jobs,
                home=home,
                config=Config(),
                transcriber_factory=shared_transcriber,
                translator_factory=translator_for,
            )

            async def status(params: object) -> object:
                return {"ok": True}

            handlers = {"status": status, **(runner.rpc_handlers() if with_jobs else {})}
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_rpc, home.socket_path, handlers)
                if with_jobs:
                    await nursery.start(runner.run)
                state.update(jobs=jobs, token=trio.lowlevel.current_trio_token(), scope=nursery)
                ready.set()

    def target() -> None:
        try:
            trio.run(serve)
        finally:
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30) and "token" in state, "the test node did not start"
    try:
        yield state["jobs"]  # type: ignore[misc]
    finally:
        nursery = state["scope"]
        trio.from_thread.run_sync(
            nursery.cancel_scope.cancel,  # type: ignore[attr-defined]
            trio_token=state["token"],  # type: ignore[arg-type]
        )
        thread.join(30)


def _wait_until_idle(jobs: JobStore) -> None:
    """Let the node finish its jobs, so no worker thread outlives the test's folders."""
    for _ in range(600):
        if all(job.status in (JobStatus.READY, JobStatus.FAILED) for job in jobs.list()):
            return
        time.sleep(0.1)
    raise AssertionError("the node's jobs did not finish")


def _srt_text(path: Path) -> str:
    cues = list(srt.parse(path.read_text(encoding="utf-8")))
    return " ".join(cue.content.replace("\n", " ") for cue in cues)


def test_standalone_writes_tracks_and_prints_their_paths(speech_wav: Path, root: Path) -> None:
    out = root / "out"
    code, stdout, error = _invoke(
        str(speech_wav), "--to", "pt", "--out", str(out), "--home", str(root / "home")
    )
    assert code == 0, error
    printed = [Path(line) for line in stdout.splitlines() if line.startswith("/")]
    assert sorted(p.name for p in printed) == [
        "memo.en.srt",
        "memo.en.vtt",
        "memo.pt.srt",
        "memo.pt.vtt",
    ]
    assert all(path.parent == out and path.is_file() for path in printed)
    assert wer(SCRIPT, _srt_text(out / "memo.en.srt")) <= 0.15


def test_standalone_default_output_is_beside_the_input(speech_wav: Path, root: Path) -> None:
    # Issue 19 moved the default from <home>/captions/<id>/ to beside the recording (the path
    # the user named); a node's job still writes into the node's home (test below).
    home = root / "home"
    code, stdout, error = _invoke(str(speech_wav), "--home", str(home), "--force")
    assert code == 0, error
    printed = [Path(line) for line in stdout.splitlines() if line.startswith("/")]
    assert len(printed) == 2
    assert all(path.parent == speech_wav.parent for path in printed)
    assert not (home / "captions").exists()


def test_bad_input_is_one_line(root: Path) -> None:
    code, _stdout, error = _invoke(str(root / "missing.wav"), "--home", str(root / "home"))
    assert code != 0 and isinstance(error, UserError)
    assert "missing.wav" in str(error) and "\n" not in str(error)
    garbage = root / "noise.wav"
    garbage.write_bytes(b"\x00\x01not audio" * 100)
    code, _stdout, error = _invoke(str(garbage), "--home", str(root / "home"))
    assert isinstance(error, UserError) and "noise.wav" in str(error), error
    assert not (root / "home" / "captions").exists() or not any(
        (root / "home" / "captions").iterdir()
    )


def test_running_node_gets_a_job_and_wait_follows_it(speech_wav: Path, root: Path) -> None:
    home = NodeHome(root / "h")
    with node_in_thread(home, with_jobs=True) as jobs:
        code, stdout, error = _invoke(str(speech_wav), "--home", str(home.root), "--wait")
        assert code == 0, error
        (job,) = jobs.list()
        assert job.status is JobStatus.READY
        printed = [line for line in stdout.splitlines() if line.startswith("/")]
        assert sorted(printed) == sorted(str(p) for p in job.outputs["files"].values())  # type: ignore[attr-defined]
        assert wer(SCRIPT, _srt_text(home.root / "captions" / job.job_id / "memo.en.srt")) <= 0.15

        # Without --wait: the job id is printed and the command returns at once.
        code, stdout, error = _invoke(str(speech_wav), "--home", str(home.root))
        assert code == 0, error
        assert stdout.strip() in {record.job_id for record in jobs.list()}

        # --local skips the node even though it runs.
        before = len(jobs.list())
        code, _stdout, error = _invoke(
            str(speech_wav), "--home", str(home.root), "--local", "--out", str(root / "here")
        )
        assert code == 0, error
        assert len(jobs.list()) == before
        assert (root / "here" / "memo.en.vtt").is_file()
        _wait_until_idle(jobs)


def test_node_errors_reach_the_user_as_one_line(speech_wav: Path, root: Path) -> None:
    home = NodeHome(root / "h")
    with node_in_thread(home, with_jobs=True):
        _code, _stdout, error = _invoke(str(speech_wav), "--home", str(home.root), "--to", "xh")
        assert isinstance(error, UserError), error
        assert "xh" in str(error) and "\n" not in str(error)
        corrupt = root / "bad.flac"
        corrupt.write_bytes(b"fLaC" + b"\x00" * 300)
        _code, _stdout, error = _invoke(str(corrupt), "--home", str(home.root), "--wait")
        assert isinstance(error, UserError), error
        assert "failed" in str(error) and "bad.flac" in str(error)


def test_node_without_caption_jobs_is_reported(speech_wav: Path, root: Path) -> None:
    home = NodeHome(root / "h")
    with node_in_thread(home, with_jobs=False):
        _code, _stdout, error = _invoke(str(speech_wav), "--home", str(home.root))
        assert isinstance(error, UserError) and "--local" in str(error), error


def test_a_node_job_takes_the_flags_of_the_command(speech_wav: Path, root: Path) -> None:
    """--format, line bounds, --word-timestamps, --keep-silence, --model, --task and --force go
    to the node's job (they used to make the command caption in its own process)."""
    home = NodeHome(root / "h")
    out = root / "flags"
    flags = ["--format", "txt,json,vtt", "--max-line-width", "16", "--max-line-count", "1"]
    flags += ["--word-timestamps", "--keep-silence", "--model", "tiny.en", "--out", str(out)]
    with node_in_thread(home, with_jobs=True) as jobs:
        code, stdout, error = _invoke(str(speech_wav), "--home", str(home.root), "--wait", *flags)
        assert code == 0, error
        (job,) = jobs.list()
        assert job.status is JobStatus.READY, job.reason
        assert job.options["formats"] == ["txt", "json", "vtt"]
        assert job.options["whisper"] == "tiny.en" and job.options["skip_silence"] is False
        assert job.options["max_line_width"] == 16 and job.options["word_timestamps"] is True
        printed = sorted(Path(line).name for line in stdout.splitlines() if line.startswith("/"))
        assert printed == ["memo.en.json", "memo.en.txt", "memo.en.vtt"]
        lines = (out / "memo.en.txt").read_text(encoding="utf-8").splitlines()
        assert lines and all(len(line) <= 16 for line in lines)
        assert "<u>" in (out / "memo.en.vtt").read_text(encoding="utf-8")
        assert wer(SCRIPT, " ".join(lines)) <= 0.15

        # The same files again: refused by the node's job, in one line, unless --force.
        _code, _stdout, error = _invoke(str(speech_wav), "--home", str(home.root), "--wait", *flags)
        assert isinstance(error, UserError) and "already exists" in str(error), error
        code, _stdout, error = _invoke(
            str(speech_wav), "--home", str(home.root), "--wait", "--force", *flags
        )
        assert code == 0, error

        # Whisper's translate task on an English-only model: the node refuses at submission.
        _code, _stdout, error = _invoke(
            str(speech_wav), "--home", str(home.root), "--task", "translate", "--model", "tiny.en"
        )
        assert isinstance(error, UserError) and "English-only" in str(error), error
        assert len(jobs.list()) == 3
        _wait_until_idle(jobs)
