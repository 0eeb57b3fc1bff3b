"""``parley dub VIDEO --to pt [--out FILE] [--force]``: the video, speaking another language.

Runs in this process with a progress bar on stderr (the video stage is long: a 30 s 720p clip
takes about as long as it plays on one core). The output path is printed on stdout; the job
summary (how each cue's speech fitted, faces found, per-stage latencies) on stderr, or as JSON
with ``--json``.

The output goes where ``--out`` says, else to ``<home>/dubs/<id>/<stem>.<lang>.mp4`` (DESIGN.md
§10: parley writes only inside its home and the paths a user names). An existing file is
never replaced unless ``--force`` is given; a failure leaves no file behind.

Registered by ``daemon.cli`` as ``app.command("dub")(dub_command)``; this module imports
``daemon.cli`` lazily so that registration at import time creates no import cycle.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from daemon.cli_options import HomeOption
from daemon.config import Config

if TYPE_CHECKING:
    from collections.abc import Callable

    from media.asr import Transcript
    from media.caption_file import FeatureDecoder
    from media.dub.pipeline import DubResult
    from media.features import FloatArray

__all__ = ["DUBS_DIR_NAME", "dub_command"]

DUBS_DIR_NAME: Final = "dubs"
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
    home: HomeOption = None,
) -> None:
    """Dub a video: translated speech in the speaker's voice traits, lips moved to it (MP4)."""
    # Errors are raised as MediaError subclasses, which ``daemon.cli.main`` prints as one line
    # (also under ``python -m daemon.cli``, where this module's view of daemon.cli.UserError
    # is not the class __main__ catches).
    from daemon.cli import resolve_home
    from daemon.config import load_config
    from daemon.jobs import default_transcriber_factory, default_translator_factory
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
    config = load_config(node_home.config_path) if node_home.config_path.exists() else Config()
    if out is not None:
        out_path = out.expanduser().resolve()
    else:
        node_home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = node_home.root / DUBS_DIR_NAME / uuid.uuid4().hex
        folder.mkdir(mode=0o700, parents=True)
        out_path = folder / f"{source.stem}.{to}.mp4"
    errors = Console(stderr=True)
    try:
        with _progress_bar(errors) as bar:
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


class _LoadOnFirstUse:
    """Loads Whisper when the first slice needs it, so a bad request fails at once."""

    def __init__(self, factory: Callable[[], FeatureDecoder]) -> None:
        self._factory = factory
        self._loaded: FeatureDecoder | None = None

    def transcribe_features(self, mel: FloatArray) -> Transcript:
        if self._loaded is None:
            self._loaded = self._factory()
        return self._loaded.transcribe_features(mel)


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


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
