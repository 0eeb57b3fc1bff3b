"""``parley caption FILES... [--language xx] [--to pt] [--out DIR] [--force]``: captions.

The spoken language is identified on the recording unless ``--language`` names it; the summary
says which language was found and how sure Whisper was, and the files are named after it
(``talk.es.srt`` plus ``talk.pt.srt`` for ``--to pt``). Languages are checked against what this
install can recognize and translate (``parley languages``) before anything is decoded.

When a node runs for the home (its status socket answers), the recording becomes a job on it:
the command prints the job id and returns, or follows the job to the end with ``--wait``. The
node then owns the work, so closing the terminal does not lose it, and jobs queue behind each
other instead of competing for the two CPU cores a call also needs. Without a node (or with
``--local``) the command captions in this process, with a progress bar on stderr.

Several files and patterns (``'talks/*.mp4'``, expanded here, sorted) are captioned one after the
other (one job each on a node). Outputs go where ``--out`` says, else beside each input
(``talk.mp4`` -> ``talk.es.srt``; a node's job: ``<home>/captions/<id>/``). A node's job
takes every flag the command takes (formats, line bounds, model, task, silence). docs/design.md,
"Storage and crash safety": parley writes only inside its home and the paths a user names, and
the input is such a path. An existing caption file is never replaced without ``--force``: that
recording is refused in one line naming the file and none of its files is written; the others go
on. The output paths are printed on stdout, one a line, so a script can pick them up; everything
else goes to stderr.

Registered by ``daemon.cli`` as ``app.command("caption")(caption_command)``; the failure helpers
come from :mod:`daemon.cli_support`, so this module never imports ``daemon.cli``.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from daemon.cli_options import HomeOption
from daemon.config import Config
from daemon.home import NodeHome
from media.caption_formats import OutputFormat, parse_formats
from media.captions import CaptionLayout
from media.errors import MediaError

if TYPE_CHECKING:
    from media.models import WhisperStore

__all__ = ["caption_command"]

DEFAULT_LAYOUT: Final = CaptionLayout()


class Task(enum.StrEnum):
    """Whisper's two tasks: write what was said, or its English translation."""

    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _LocalOptions:
    """The flags beyond languages and folders; a node's job takes them too (``_job_flags``)."""

    formats: tuple[OutputFormat, ...] = (OutputFormat.SRT, OutputFormat.VTT)
    layout: CaptionLayout
    highlight_words: bool = False
    overwrite: bool = False
    model: str | None = None
    task: Task = Task.TRANSCRIBE
    skip_silence: bool = True


#: How often ``--wait`` asks the node how its job is doing.
WAIT_POLL_S: Final = 0.5
_STAGE_NAMES: Final = {
    "decode": "decoding audio",
    "transcribe": "transcribing",
    "translate": "translating",
    "write": "writing files",
    "done": "done",
}


def caption_command(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Audio or video files; a pattern such as 'talks/*.mp4' is expanded.",
            show_default=False,
        ),
    ],
    *,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", help="Also write a track translated into this language (repeat)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder \\[default: beside each input; on a node: <home>/captions/<id>/].",
        ),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(
            "--language",
            help="The spoken language (e.g. es) \\[default: identify it on the recording].",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace caption files that already exist.")
    ] = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Files to write per language, comma-separated: srt, vtt, json, txt, tsv or all.",
        ),
    ] = "srt,vtt",
    max_line_width: Annotated[
        int, typer.Option("--max-line-width", help="Most characters on a caption line.", min=1)
    ] = DEFAULT_LAYOUT.max_line_chars,
    max_line_count: Annotated[
        int, typer.Option("--max-line-count", help="Most lines in one caption.", min=1)
    ] = DEFAULT_LAYOUT.max_lines,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Whisper model: auto, tiny.en, base or a local faster-whisper folder "
            "\\[default: models.whisper].",
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            help="transcribe, or translate the speech into English (multilingual models).",
        ),
    ] = Task.TRANSCRIBE,
    skip_silence: Annotated[
        bool,
        typer.Option(
            "--skip-silence/--keep-silence",
            help="Skip silences of 2 s and more that the Silero VAD (shipped with "
            "faster-whisper) finds, or decode the whole recording.",
        ),
    ] = True,
    word_timestamps: Annotated[
        bool,
        typer.Option(
            "--word-timestamps",
            help="In the spoken language's WebVTT, underline each word while it is spoken.",
        ),
    ] = False,
    home: HomeOption = None,
    local: Annotated[
        bool, typer.Option("--local", help="Caption in this process even if a node runs.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="On a node: follow the job until ready or failed.")
    ] = False,
) -> None:
    """Captions for recordings (audio or video): SRT and WebVTT, optionally translated."""
    from daemon.cli_support import fail, resolve_home

    node_home = resolve_home(home)
    sources = _expand(files)
    out_dir = out.expanduser().resolve() if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        fail(f"{out}: exists and is not a folder")
    languages = list(to or [])
    errors = Console(stderr=True)
    try:
        formats = parse_formats(output_format)
    except MediaError as error:
        fail(str(error))
    layout = CaptionLayout(max_line_chars=max_line_width, max_lines=max_line_count)
    options = _LocalOptions(
        formats=formats,
        layout=layout,
        highlight_words=word_timestamps,
        overwrite=force,
        model=model,
        task=task,
        skip_silence=skip_silence,
    )
    if model is not None:
        _check_model(model)
    if not local:
        jobs = [
            _submit(node_home, source, languages, out_dir, language, options=options)
            for source in sources
        ]
        job_ids = [str(job.get("id")) for job in jobs if job is not None]
        if job_ids:
            if not wait:
                for job_id in job_ids:
                    print(job_id)
                errors.print(
                    f"queued {len(job_ids)} caption job(s) on the running node; follow them "
                    "with 'parley status' (or rerun with --wait)",
                    highlight=False,
                )
                return
            for job_id in job_ids:
                _follow(node_home, job_id, errors)
            return
        errors.print("no node is running: captioning in this process", highlight=False)
    _caption_here(
        node_home, sources, languages, out_dir, language=language, options=options, errors=errors
    )


def _expand(arguments: list[str]) -> list[Path]:
    """The files named, patterns expanded (sorted), each once; a one-line failure otherwise."""
    from daemon.cli_support import fail

    sources: dict[Path, None] = {}
    for argument in arguments:
        if glob.has_magic(argument):
            matches = sorted(glob.glob(str(Path(argument).expanduser())))
            if not matches:
                fail(f"{argument}: no file matches")
            named = [Path(match) for match in matches]
        else:
            named = [Path(argument)]
        for path in named:
            source = path.expanduser().resolve()
            if not source.is_file():
                problem = "no such file" if not source.exists() else "not a regular file"
                fail(f"{path}: {problem}")
            sources.setdefault(source, None)
    return list(sources)


def _submit(
    node_home: NodeHome,
    source: Path,
    languages: list[str],
    out_dir: Path | None,
    language: str | None,
    *,
    options: _LocalOptions,
) -> Mapping[str, object] | None:
    """The queued job, or ``None`` when no node answers on the home's socket."""
    from daemon.cli_support import fail
    from daemon.rpc_client import RpcCallError, RpcClientError, RpcUnavailableError, call_sync

    params: dict[str, object] = {"path": str(source), "to": languages}
    if out_dir is not None:
        params["out_dir"] = str(out_dir)
    if language is not None:
        params["language"] = language
    params.update(_job_flags(options))
    try:
        job = call_sync(node_home.socket_path, "caption.submit", params)
    except RpcUnavailableError:
        return None
    except RpcCallError as error:
        if error.code == "method_not_found":
            fail("the running node does not take caption jobs; rerun with --local")
        fail(f"caption: {error.error.message}")
    except RpcClientError as error:
        fail(f"caption: {error}")
    if not isinstance(job, Mapping) or not isinstance(job.get("id"), str):
        fail("caption: the node answered caption.submit with something that is not a job")
    return job


def _job_flags(options: _LocalOptions) -> dict[str, object]:
    """The flags as a node's ``caption.submit`` takes them (``daemon.jobs.CaptionJobOptions``);
    defaults are left out, so a node from before these flags still takes a plain request."""
    flags: dict[str, object] = {}
    defaults = _LocalOptions(layout=DEFAULT_LAYOUT)
    if options.formats != defaults.formats:
        flags["formats"] = [output_format.value for output_format in options.formats]
    if options.layout.max_line_chars != DEFAULT_LAYOUT.max_line_chars:
        flags["max_line_width"] = options.layout.max_line_chars
    if options.layout.max_lines != DEFAULT_LAYOUT.max_lines:
        flags["max_line_count"] = options.layout.max_lines
    if options.highlight_words:
        flags["word_timestamps"] = True
    if options.model is not None:
        flags["whisper"] = _model_setting(options.model)
    if options.task is not Task.TRANSCRIBE:
        flags["task"] = options.task.value
    if not options.skip_silence:
        flags["skip_silence"] = False
    if options.overwrite:
        flags["force"] = True
    return flags


def _model_setting(model: str) -> str:
    """``--model`` as a ``models.whisper`` value: a name as it is, a folder made absolute (the
    node runs in another folder)."""
    from media.models import AUTO, EMBEDDED_MODELS

    if model in (AUTO, *EMBEDDED_MODELS):
        return model
    return str(Path(model).expanduser().resolve())


def _check_model(model: str) -> None:
    """``--model`` names a model parley ships or a folder, else one line."""
    from daemon.cli_support import fail
    from media.models import AUTO, EMBEDDED_MODELS

    if model not in (AUTO, *EMBEDDED_MODELS) and not Path(model).expanduser().is_dir():
        names = ", ".join((AUTO, *EMBEDDED_MODELS))
        fail(f"--model {model}: neither a model parley ships ({names}) nor a folder")


def _follow(node_home: NodeHome, job_id: str, errors: Console) -> None:
    """Poll ``caption.get`` until the job ends; print its outputs or fail with its reason."""
    from daemon.cli_support import fail
    from daemon.rpc_client import RpcClientError, call_sync

    errors.print(f"caption job {job_id} queued on the running node", highlight=False)
    with stage_progress_bar(errors) as bar:
        task = bar.add_task("pending", total=1.0)
        while True:
            try:
                job = call_sync(node_home.socket_path, "caption.get", {"id": job_id})
            except RpcClientError as error:
                fail(f"caption: lost the node while waiting for job {job_id}: {error}")
            if not isinstance(job, Mapping):
                fail("caption: the node answered caption.get with something that is not a job")
            status = str(job.get("status"))
            progress = job.get("progress")
            if isinstance(progress, Mapping):
                stage = str(progress.get("stage"))
                fraction = progress.get("fraction")
                completed = float(fraction) if isinstance(fraction, int | float) else 0.0
                bar.update(task, description=_STAGE_NAMES.get(stage, stage), completed=completed)
            else:
                bar.update(task, description=status)
            if status in ("ready", "failed"):
                if status == "ready":
                    bar.update(task, description="done", completed=1.0)
                break
            time.sleep(WAIT_POLL_S)
    if status == "failed":
        fail(f"caption job {job_id} failed: {job.get('reason')}")
    outputs = job.get("outputs")
    files = outputs.get("files") if isinstance(outputs, Mapping) else None
    if isinstance(files, Mapping):
        for path in files.values():
            print(path)
    if isinstance(outputs, Mapping):
        errors.print(_summary(outputs), highlight=False)


def _caption_here(
    node_home: NodeHome,
    sources: list[Path],
    languages: list[str],
    out_dir: Path | None,
    *,
    language: str | None,
    options: _LocalOptions,
    errors: Console,
) -> None:
    from daemon.cli_support import fail
    from daemon.config import load_config
    from daemon.jobs import default_translator_factory
    from daemon.language_setup import language_matrix_for, whisper_store_for
    from media.asr import DecodeOptions
    from media.caption_file import OutputExistsError, caption_recording
    from media.recognizer import WhisperRecognizer

    config = load_config(node_home.config_path) if node_home.config_path.exists() else Config()
    if options.model is not None:
        config = _with_model(config, options.model)
    try:
        matrix = language_matrix_for(config)
        if language is not None:
            matrix.check_speaker(language)
            for target in languages:
                matrix.check_translation(
                    "en" if options.task is Task.TRANSLATE else language, target
                )
    except MediaError as error:
        fail(str(error))
    store = whisper_store_for(config, node_home.root)
    if options.task is Task.TRANSLATE:
        _check_translates(store)
    recognizer = WhisperRecognizer(store, options=DecodeOptions(task=options.task.value))
    translator_factory = default_translator_factory(config)
    failures: list[str] = []
    for source in sources:
        try:
            with stage_progress_bar(errors) as bar:
                task = bar.add_task("starting", total=1.0)

                result = caption_recording(
                    source,
                    out_dir=out_dir if out_dir is not None else source.parent,
                    recognizer=recognizer,
                    language=language,
                    translator_factory=translator_factory,
                    to_languages=languages,
                    progress=_reporter(bar, task),
                    overwrite=options.overwrite,
                    formats=options.formats,
                    layout=options.layout,
                    highlight_words=options.highlight_words,
                    translated_by_whisper=options.task is Task.TRANSLATE,
                    skip_silence=options.skip_silence,
                )
        except OutputExistsError as error:
            failures.append(f"{error.path} exists: not replaced (--force replaces it)")
        except MediaError as error:
            failures.append(str(error))
        else:
            for path in result.outputs.values():
                print(path)
            errors.print(
                f"{source.name}: "
                + _summary(
                    {
                        "cue_count": result.cue_count,
                        "language": result.language,
                        "language_probability": result.language_probability,
                        "duration_s": result.duration_s,
                    }
                ),
                highlight=False,
            )
            continue
        if len(sources) > 1:
            errors.print(f"{source.name}: {failures[-1]}", highlight=False)
    if len(failures) == 1 and len(sources) == 1:
        fail(failures[0])
    if failures:
        fail(f"{len(failures)} of {len(sources)} files were not captioned (see above)")


def _with_model(config: Config, model: str) -> Config:
    """``config`` with ``models.whisper`` set to ``--model`` (a folder must exist)."""
    _check_model(model)
    models = dataclasses.replace(config.models, whisper=_model_setting(model), whisper_dir="")
    return dataclasses.replace(config, models=models)


def _check_translates(store: WhisperStore) -> None:
    """Refuse ``--task translate`` on an English-only model, in one line."""
    from daemon.cli_support import fail
    from daemon.jobs import whisper_cannot_translate

    try:
        refusal = whisper_cannot_translate(store)
    except MediaError as error:
        fail(str(error))
    if refusal is not None:
        fail(refusal)


def _reporter(bar: Progress, task: TaskID) -> Callable[[str, float], None]:
    def report(stage: str, fraction: float) -> None:
        bar.update(task, description=_STAGE_NAMES.get(stage, stage), completed=fraction)

    return report


def _summary(outputs: Mapping[str, object]) -> str:
    duration = outputs.get("duration_s")
    shown = f"{duration:.1f} s" if isinstance(duration, int | float) else "?"
    probability = outputs.get("language_probability")
    how_sure = (
        f" (identified, probability {probability:.0%})"
        if isinstance(probability, int | float)
        else " (as given)"
    )
    return (
        f"{outputs.get('cue_count')} cues in {outputs.get('language')}{how_sure} "
        f"from {shown} of audio"
    )


def stage_progress_bar(console: Console) -> Progress:
    """The progress bar of long file work (captioning, dubbing): stage, bar, %, elapsed."""
    return Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
