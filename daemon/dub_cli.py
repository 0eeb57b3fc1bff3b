"""``parley dub VIDEO --to pt [--out FILE] [--force]``: the video, speaking another language.

When a node runs for the home (its status socket answers), the video becomes a ``dub`` job on
it, queued behind the caption jobs (``parley status`` lists it): the command prints the job id,
or follows it to the end with ``--wait``. Without a node (or with ``--local``) it dubs in this
process with a progress bar on stderr. The output path is printed on stdout; the job summary
(how each cue's speech fitted, faces found, per-stage latencies) on stderr, or as JSON with
``--json``.

The output goes where ``--out`` says, else to ``<home>/dubs/<id>/<stem>.<lang>.mp4``
(docs/design.md, "Storage and crash safety": parley writes only inside its home and the paths a user
names). An existing file is never replaced unless ``--force`` is given; a failure leaves no file
behind.

Registered by ``daemon.cli`` as ``app.command("dub")(dub_command)``; this module imports
``daemon.cli`` lazily so that registration at import time creates no import cycle.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console

from daemon.caption_cli import stage_progress_bar
from daemon.cli_options import HomeOption
from daemon.config import Config
from daemon.home import NodeHome

if TYPE_CHECKING:
    from collections.abc import Callable

    from media.asr import Transcript
    from media.caption_file import FeatureDecoder
    from media.dub.pipeline import DubResult
    from media.features import FloatArray

__all__ = ["dub_command"]

#: How often ``--wait`` asks the node how its job is doing.
WAIT_POLL_S: Final = 0.5
_STAGE_NAMES: Final = {
    "check": "checking",
    "transcribe": "transcribing",
    "translate": "translating",
    "speak": "speaking",
    "video": "lip sync",
    "done": "done",
}


def dub_command(
    file: Annotated[Path, typer.Argument(help="A video with speech.", show_default=False)],
    *,
    to: Annotated[str, typer.Option("--to", help="The language to dub into, e.g. pt.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output MP4 \\[default: <home>/dubs/<id>/<stem>.<lang>.mp4]."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    no_lip_sync: Annotated[
        bool,
        typer.Option("--no-lip-sync", help="Dub the audio only; leave the frames as they are."),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the job summary as JSON on stdout.")
    ] = False,
    local: Annotated[
        bool, typer.Option("--local", help="Dub in this process even if a node runs.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="On a node: follow the job until ready or failed.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Dub a video: translated speech in the speaker's voice traits, lips moved to it (MP4)."""
    # Errors are raised as MediaError subclasses, which ``daemon.cli.main`` prints as one line
    # (also under ``python -m daemon.cli``, where this module's view of daemon.cli.UserError
    # is not the class __main__ catches).
    from daemon.cli_support import resolve_home
    from daemon.config import load_config
    from daemon.jobs import (
        DUBS_DIR_NAME,
        default_transcriber_factory,
        default_translator_factory,
    )
    from media.dub.errors import DubError, VideoFileError
    from media.dub.pipeline import DubOptions, dub_video
    from media.errors import MediaError
    from media.translate import language_key

    node_home = resolve_home(home)
    source = file.expanduser().resolve()
    if not source.is_file():
        raise VideoFileError(
            f"{file}: {'no such file' if not source.exists() else 'not a regular file'}"
        )
    try:
        language_key(to)
    except MediaError as error:
        raise DubError(f"--to: {error}") from error
    errors = Console(stderr=True)
    if not local and not no_lip_sync:
        target = out.expanduser().resolve() if out is not None else None
        job = _submit(node_home, source, to, target, force)
        if job is not None:
            job_id = str(job.get("id"))
            if not wait:
                print(job_id)
                errors.print(
                    f"queued dub job {job_id} on the running node; follow it with "
                    "'parley status' (or rerun with --wait)",
                    highlight=False,
                )
                return
            _follow(node_home, job_id, errors, json_out=json_out)
            return
        errors.print("no node is running: dubbing in this process", highlight=False)
    config = load_config(node_home.config_path) if node_home.config_path.exists() else Config()
    if out is not None:
        out_path = out.expanduser().resolve()
    else:
        node_home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = node_home.root / DUBS_DIR_NAME / uuid.uuid4().hex
        folder.mkdir(mode=0o700, parents=True)
        out_path = folder / f"{source.stem}.{to}.mp4"
    try:
        with stage_progress_bar(errors) as bar:
            task = bar.add_task("starting", total=1.0)

            def report(stage: str, fraction: float) -> None:
                bar.update(task, description=_STAGE_NAMES.get(stage, stage), completed=fraction)

            result = dub_video(
                source,
                out_path,
                options=DubOptions(
                    target_language=to, lip_sync=not no_lip_sync, replace=force, threads=1
                ),
                transcriber=_LoadOnFirstUse(default_transcriber_factory(config)),
                translator_factory=default_translator_factory(config),
                progress=report,
            )
    except MediaError:
        if out is None:
            _remove_empty(out_path.parent)
        raise
    if json_out:
        print(json.dumps(result.summary(), indent=2))
    else:
        print(result.out_path)
        errors.print(_summary_line(result), highlight=False)


def _submit(
    node_home: NodeHome, source: Path, to: str, out: Path | None, force: bool
) -> Mapping[str, object] | None:
    """The queued job, or ``None`` when no node answers on the home's socket."""
    from daemon.rpc_client import RpcCallError, RpcClientError, RpcUnavailableError, call_sync
    from media.dub.errors import DubError

    params: dict[str, object] = {"path": str(source), "to": to, "force": force}
    if out is not None:
        params["out"] = str(out)
    try:
        job = call_sync(node_home.socket_path, "dub.submit", params)
    except RpcUnavailableError:
        return None
    except RpcCallError as error:
        if error.code == "method_not_found":
            raise DubError("the running node does not take dub jobs; rerun with --local") from None
        raise DubError(f"dub: {error.error.message}") from None
    except RpcClientError as error:
        raise DubError(f"dub: {error}") from None
    if not isinstance(job, Mapping) or not isinstance(job.get("id"), str):
        raise DubError("dub: the node answered dub.submit with something that is not a job")
    return job


def _follow(node_home: NodeHome, job_id: str, errors: Console, *, json_out: bool) -> None:
    """Poll ``dub.get`` until the job ends; print its output or fail with its reason."""
    from daemon.rpc_client import RpcClientError, call_sync
    from media.dub.errors import DubError

    with stage_progress_bar(errors) as bar:
        task = bar.add_task("pending", total=1.0)
        while True:
            try:
                job = call_sync(node_home.socket_path, "dub.get", {"id": job_id})
            except RpcClientError as error:
                raise DubError(
                    f"dub: lost the node while waiting for job {job_id}: {error}"
                ) from None
            if not isinstance(job, Mapping):
                raise DubError("dub: the node answered dub.get with something that is not a job")
            status = str(job.get("status"))
            progress = job.get("progress")
            if isinstance(progress, Mapping):
                stage = str(progress.get("stage"))
                fraction = progress.get("fraction")
                completed = float(fraction) if isinstance(fraction, int | float) else 0.0
                bar.update(task, description=_STAGE_NAMES.get(stage, stage), completed=completed)
            if status in ("ready", "failed"):
                break
            time.sleep(WAIT_POLL_S)
    if status == "failed":
        raise DubError(f"dub job {job_id} failed: {job.get('reason')}")
    outputs = job.get("outputs")
    if json_out:
        print(json.dumps(outputs, indent=2))
    elif isinstance(outputs, Mapping):
        print(outputs.get("output"))


class _LoadOnFirstUse:
    """Loads Whisper when the first slice needs it, so a bad request fails at once."""

    def __init__(self, factory: Callable[[], FeatureDecoder]) -> None:
        self._factory = factory
        self._loaded: FeatureDecoder | None = None

    def transcribe_features(
        self, mel: FloatArray, *, on_progress: Callable[[float], None] | None = None
    ) -> Transcript:
        if self._loaded is None:
            self._loaded = self._factory()
        return self._loaded.transcribe_features(mel, on_progress=on_progress)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _summary_line(result: DubResult) -> str:
    summary = result.summary()
    stages = result.stats.summary()
    timing = ", ".join(
        f"{stage} {stages[stage]['p50_ms']:.1f} ms"
        for stage in ("detect", "landmarks", "visemes", "warp", "encode")
        if stage in stages
    )
    return (
        f"{summary['cue_count']} cues dubbed {summary['speech_fit']}; "
        f"{summary['frames_lip_synced']}/{summary['frames']} frames lip-synced; "
        f"p50 per frame: {timing}"
    )
