"""The node's job runner: ``caption.submit`` and ``dub.submit`` over the status RPC, one job at a
time.

Theory of operation
-------------------
Jobs live in the node database (:class:`daemon.database.JobStore`), whose status machine is
``pending → processing → ready | failed``. The RPC handler validates a request (the file exists,
every target language has a translator) and inserts a ``pending`` row, then wakes the runner.
:meth:`JobRunner.run` loops: claim the oldest pending job, caption it in a worker thread
(``trio.to_thread.run_sync``: decoding a recording takes seconds to minutes, the event loop only
awaits it), mark it ``ready`` with its output files or ``failed`` with a one-line reason, repeat.
With nothing pending it sleeps until a submission wakes it, or until ``poll_interval_s`` passes,
so jobs that appear in the database any other way are still picked up.

Crash safety: a job is ``processing`` only while a worker has it. If the node dies mid-job, the
next start's :meth:`JobStore.recover_interrupted` (called by ``open_node`` before the runner
starts) puts it back to ``pending`` and it runs again from the start; outputs are written with
temp + rename, so a half-finished earlier attempt left no half-written file behind. When the
runner is cancelled (node shutdown) while a job runs, the job stays ``processing`` for that same
recovery, and the worker thread is told to stop at its next progress report instead of being
waited for.

Failures are per job: a ``MediaError`` (corrupt or silent file, missing model) or an ``OSError``
fails the job with the error's one-line message; anything else is a bug, logged with its traceback
and recorded as ``internal error: ...``. Either way the runner goes on with the next job.

Two kinds of job share the queue: ``caption`` (:func:`media.caption_file.caption_recording`)
and ``dub`` (:func:`media.dub.pipeline.dub_video`, a translated, lip-synced MP4).

The Whisper model is loaded on the first job (not at node start: a node that never captions
never pays for it) and kept; translators are built once per language pair.

Languages: a job names the spoken language (``language``) or leaves it to identification on the
recording (:class:`media.recognizer.WhisperRecognizer`); the job's outputs carry the language and,
when identified, Whisper's probability for it. A submission is checked against the language
matrix (:mod:`media.languages`) so an unsupported language or target is refused at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from common.atomic import write_atomic
from daemon.config import Config
from daemon.database import DatabaseError, JobRecord, JobStatus, JobStore
from daemon.faults import FaultLog, is_disk_full
from daemon.home import NodeHome
from daemon.logs import event, get_logger
from daemon.rpc import RpcHandlerError
from media.caption_file import (
    CaptionResult,
    FeatureDecoder,
    SpeechRecognizer,
    caption_recording,
)
from media.caption_formats import OutputFormat, parse_formats
from media.captions import CaptionLayout
from media.errors import MediaError
from media.languages import LanguageMatrix, LanguageUnavailableError
from media.translate import (
    Translator,
    UnsupportedLanguagePairError,
    language_key,
    select_translator,
)

__all__ = [
    "CAPTION_JOB_KIND",
    "DUB_JOB_KIND",
    "CaptionJobOptions",
    "DubJobOptions",
    "JobOptionsError",
    "JobRunner",
    "default_named_model_loader",
    "default_recognizer_factory",
    "default_transcriber_factory",
    "default_translator_factory",
    "job_dict",
    "whisper_cannot_translate",
]

if TYPE_CHECKING:
    from media.asr import Transcript
    from media.features import FloatArray
    from media.models import WhisperStore

log = get_logger("jobs")

CAPTION_JOB_KIND: Final = "caption"
#: How often the runner looks for pending jobs nobody told it about.
DEFAULT_POLL_INTERVAL_S: Final = 5.0
#: Named limits on one submission.
MAX_TARGET_LANGUAGES: Final = 8
MAX_PATH_CHARS: Final = 4096
CAPTIONS_DIR_NAME: Final = "captions"
#: Other Whisper models a job may name: ``<home>/models/whisper/<name>/`` (CTranslate2 folders).
WHISPER_MODELS_DIR_NAME: Final = "whisper"
MODEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DUB_JOB_KIND: Final = "dub"
DUBS_DIR_NAME: Final = "dubs"
DEFAULT_FORMATS: Final = ("srt", "vtt")
DEFAULT_LAYOUT: Final = CaptionLayout()
#: The largest ``max_line_width`` / ``max_line_count`` a job takes.
MAX_LAYOUT_VALUE: Final = 1000
TASKS: Final = ("transcribe", "translate")
#: ``models.whisper`` values a job may name besides an absolute folder.
WHISPER_NAMES: Final = ("auto", "tiny.en", "base")

Handler = Callable[[Any], Awaitable[object]]
TranscriberFactory = Callable[[], FeatureDecoder]
#: Loads the Whisper model in a folder (a job that names a model).
NamedModelLoader = Callable[[Path], FeatureDecoder]
RecognizerFactory = Callable[[], SpeechRecognizer]
TranslatorFactory = Callable[[str, str], Translator]


class JobOptionsError(ValueError):
    """A job row asks for something the runner cannot do (unknown kind, malformed options)."""


class _JobInterrupted(Exception):
    """Raised inside a worker thread whose runner was cancelled: stop at the next window."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptionJobOptions:
    """What a caption job was asked for, as stored in the job row's ``options``.

    The fields after ``language`` are ``parley caption``'s flags (``--format``,
    ``--max-line-width``, ``--max-line-count``, ``--word-timestamps``, ``--model``, ``--task``,
    ``--skip-silence/--keep-silence``, ``--force``); a row written before they existed reads
    as their defaults.
    """

    to: tuple[str, ...] = ()
    out_dir: str | None = None
    #: Also write ``<stem>.transcript.json``: every track's cues, the source's with word times
    #: (the web page's clickable transcript and its ``format=json`` captions).
    transcript: bool = False
    #: A Whisper model folder's name under ``<home>/models/whisper/``; None: the node's default.
    model: str | None = None
    #: The spoken language; ``None``: identify it on the recording.
    language: str | None = None
    #: Files per language (``media.caption_formats.OutputFormat`` values).
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_line_width: int = DEFAULT_LAYOUT.max_line_chars
    max_line_count: int = DEFAULT_LAYOUT.max_lines
    word_timestamps: bool = False
    #: A ``models.whisper`` value for this job: auto, tiny.en, base or an absolute folder.
    whisper: str | None = None
    task: str = "transcribe"
    skip_silence: bool = True
    #: Replace files that exist in ``out_dir`` (a job's own folder is always new).
    force: bool = False

    def __post_init__(self) -> None:
        if self.model is not None and not MODEL_NAME.fullmatch(self.model):
            raise JobOptionsError(f"{self.model[:70]!r} is not a model name")
        if self.language is not None:
            language_key(self.language)
        if len(self.to) > MAX_TARGET_LANGUAGES:
            raise JobOptionsError(
                f"at most {MAX_TARGET_LANGUAGES} target languages, got {len(self.to)}"
            )
        for tag in self.to:
            language_key(tag)  # raises a one-line TranslationError for a malformed tag
        if self.out_dir is not None and not Path(self.out_dir).is_absolute():
            raise JobOptionsError(f"out_dir must be an absolute path, got {self.out_dir!r}")
        parse_formats(",".join(self.formats))  # a one-line FormatError for an unknown one
        for name, value in (
            ("max_line_width", self.max_line_width),
            ("max_line_count", self.max_line_count),
        ):
            if isinstance(value, bool) or not 1 <= value <= MAX_LAYOUT_VALUE:
                raise JobOptionsError(f"{name} must be 1..{MAX_LAYOUT_VALUE}, got {value!r}")
        if self.task not in TASKS:
            raise JobOptionsError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.whisper is not None:
            if self.model is not None:
                raise JobOptionsError("name either a model or a whisper setting, not both")
            if self.whisper not in WHISPER_NAMES and not Path(self.whisper).is_absolute():
                raise JobOptionsError(
                    f"whisper must be {', '.join(WHISPER_NAMES)} or an absolute folder, "
                    f"got {self.whisper[:70]!r}"
                )
        if self.task != "transcribe" and self.model is not None:
            raise JobOptionsError("a named model transcribes only; use whisper for --task")

    @property
    def layout(self) -> CaptionLayout:
        return CaptionLayout(max_line_chars=self.max_line_width, max_lines=self.max_line_count)

    @property
    def output_formats(self) -> tuple[OutputFormat, ...]:
        return parse_formats(",".join(self.formats))

    def to_json(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "to": list(self.to),
            "out_dir": self.out_dir,
            "language": self.language,
        }
        if self.transcript:
            shown["transcript"] = True
        if self.model is not None:
            shown["model"] = self.model
        defaults = CaptionJobOptions()
        for name in _CLI_OPTION_NAMES:
            value = getattr(self, name)
            if value != getattr(defaults, name):
                shown[name] = list(value) if isinstance(value, tuple) else value
        return shown

    @classmethod
    def from_json(cls, options: Mapping[str, object]) -> CaptionJobOptions:
        to = options.get("to", [])
        out_dir = options.get("out_dir")
        transcript = options.get("transcript", False)
        model = options.get("model")
        if not isinstance(transcript, bool):
            raise JobOptionsError("'transcript' must be true or false")
        if model is not None and not isinstance(model, str):
            raise JobOptionsError("'model' must be a model name")
        language = options.get("language")
        if language is not None and not isinstance(language, str):
            raise JobOptionsError("'language' must be a language tag")
        if not isinstance(to, list) or not all(isinstance(tag, str) for tag in to):
            raise JobOptionsError("'to' must be a list of language tags")
        if out_dir is not None and not isinstance(out_dir, str):
            raise JobOptionsError("'out_dir' must be a string")
        return cls(
            to=tuple(to),
            out_dir=out_dir,
            transcript=transcript,
            model=model,
            language=language,
            **_cli_options_from_json(options),
        )


#: The ``parley caption`` flags a job takes, by field name.
_CLI_OPTION_NAMES: Final = (
    "formats",
    "max_line_width",
    "max_line_count",
    "word_timestamps",
    "whisper",
    "task",
    "skip_silence",
    "force",
)


def _cli_options_from_json(options: Mapping[str, object]) -> dict[str, Any]:
    """The flag fields present in ``options``, each of its type (or a ``JobOptionsError``)."""
    found: dict[str, Any] = {}
    formats = options.get("formats")
    if formats is not None:
        if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
            raise JobOptionsError("'formats' must be a list of format names")
        found["formats"] = tuple(formats)
    for name in ("max_line_width", "max_line_count"):
        value = options.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise JobOptionsError(f"{name!r} must be a whole number")
            found[name] = value
    for name in ("word_timestamps", "skip_silence", "force"):
        value = options.get(name)
        if value is not None:
            if not isinstance(value, bool):
                raise JobOptionsError(f"{name!r} must be true or false")
            found[name] = value
    for name in ("whisper", "task"):
        value = options.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise JobOptionsError(f"{name!r} must be a string")
            found[name] = value
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class DubJobOptions:
    """What a dub job was asked for: the target language, the output file, replace or not."""

    to: str
    out: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        language_key(self.to)  # raises a one-line TranslationError for a malformed tag
        if self.out is not None and not Path(self.out).is_absolute():
            raise JobOptionsError(f"out must be an absolute path, got {self.out!r}")

    def to_json(self) -> dict[str, object]:
        return {"to": self.to, "out": self.out, "force": self.force}

    @classmethod
    def from_json(cls, options: Mapping[str, object]) -> DubJobOptions:
        to, out, force = options.get("to"), options.get("out"), options.get("force", False)
        if not isinstance(to, str):
            raise JobOptionsError("'to' must be a language tag")
        if out is not None and not isinstance(out, str):
            raise JobOptionsError("'out' must be a string")
        if not isinstance(force, bool):
            raise JobOptionsError("'force' must be true or false")
        return cls(to=to, out=out, force=force)


def job_dict(job: JobRecord) -> dict[str, object]:
    """A job as the status RPC shows it (the same keys as the node's ``jobs`` method)."""
    return {
        "id": job.job_id,
        "kind": job.kind,
        "input": job.input_path,
        "status": job.status.value,
        "reason": job.reason,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "outputs": dict(job.outputs),
    }


def default_transcriber_factory(config: Config) -> TranscriberFactory:
    """Whisper from ``models.whisper_dir`` (empty: the embedded tiny.en), decoding English."""

    def load() -> FeatureDecoder:
        from media.asr import FeatureTranscriber
        from media.models import load_whisper

        folder = Path(config.models.whisper_dir) if config.models.whisper_dir else None
        return FeatureTranscriber(
            load_whisper(folder, cpu_threads=config.models.cpu_threads, compute_type="float32")
        )

    return load


def default_named_model_loader(config: Config) -> NamedModelLoader:
    """A named model's folder loaded like the default one (CPU threads from the config)."""

    def load(folder: Path) -> FeatureDecoder:
        from media.asr import FeatureTranscriber
        from media.models import load_whisper

        return FeatureTranscriber(
            load_whisper(folder, cpu_threads=config.models.cpu_threads, compute_type="float32")
        )

    return load


def default_recognizer_factory(config: Config, home_root: Path) -> RecognizerFactory:
    """Identification and per-language Whisper from ``models.whisper`` (cache in the home)."""

    def load() -> SpeechRecognizer:
        from daemon.language_setup import whisper_store_for
        from media.recognizer import WhisperRecognizer

        return WhisperRecognizer(whisper_store_for(config, home_root))

    return load


def default_translator_factory(config: Config) -> TranslatorFactory:
    """Translators from ``models.translation_backend`` and ``models.translation_dir``."""
    from daemon.language_setup import translation_config_for

    translation = translation_config_for(config)

    def build(source: str, target: str) -> Translator:
        return select_translator(source, target, translation)

    return build


@dataclass(frozen=True, slots=True)
class _Progress:
    job_id: str
    stage: str
    fraction: float


class JobRunner:
    """Runs caption jobs from ``jobs`` one at a time; see the module docstring."""

    def __init__(
        self,
        jobs: JobStore,
        *,
        home: NodeHome,
        config: Config,
        transcriber_factory: TranscriberFactory | None = None,
        translator_factory: TranslatorFactory | None = None,
        named_model_loader: NamedModelLoader | None = None,
        recognizer_factory: RecognizerFactory | None = None,
        source_language: str = "en",
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        faults: FaultLog | None = None,
        after_job: Callable[[], object] | None = None,
    ) -> None:
        """``transcriber_factory`` fixes one decoder for ``source_language`` (tests inject a
        small one); without it, jobs identify or take their language and use the recognizer."""
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self._jobs = jobs
        self._home = home
        self._config = config
        self._transcriber_factory = transcriber_factory
        # Factories built from the config are built again when it is reloaded; injected ones
        # (tests) are kept.
        self._own_factories = (
            recognizer_factory is None,
            translator_factory is None,
            named_model_loader is None,
        )
        self._recognizer_factory = (
            recognizer_factory
            if recognizer_factory is not None
            else default_recognizer_factory(config, home.root)
        )
        self._recognizer: SpeechRecognizer | None = None
        self._other_recognizers: dict[tuple[str | None, str], SpeechRecognizer] = {}
        self._matrix: LanguageMatrix | None = None
        self._translator_factory = translator_factory or default_translator_factory(config)
        self._named_model_loader = named_model_loader or default_named_model_loader(config)
        self._named_models: dict[str, FeatureDecoder] = {}
        self._source_language = source_language
        self._poll_interval_s = poll_interval_s
        self._wakeup = trio.Event()
        # Touched from worker threads (the job's, and the submit handler's translator check).
        self._model_lock = threading.Lock()
        self._translators_lock = threading.Lock()
        self._transcriber: FeatureDecoder | None = None
        self._translators: dict[tuple[str, str], Translator] = {}
        self._progress: _Progress | None = None
        self._stop_worker = threading.Event()
        self._faults = faults if faults is not None else FaultLog()
        self._after_job = after_job
        self.jobs_finished = 0

    @property
    def progress(self) -> dict[str, object] | None:
        """The running job's stage and completed fraction, or ``None`` when idle."""
        current = self._progress
        if current is None:
            return None
        return {"id": current.job_id, "stage": current.stage, "fraction": current.fraction}

    def output_dir(self, job: JobRecord, options: CaptionJobOptions) -> Path:
        """Where a job's files go: the folder asked for, else ``<home>/captions/<job id>/``."""
        if options.out_dir is not None:
            return Path(options.out_dir)
        return self._home.root / CAPTIONS_DIR_NAME / job.job_id

    def update_config(self, config: Config) -> None:
        """A reloaded config (SIGHUP): the ``[models]`` settings apply from the next job.

        The models, translators and language matrix held for earlier jobs are let go; a job
        running now keeps the ones it holds and finishes with them."""
        own_recognizer, own_translators, own_loader = self._own_factories
        with self._model_lock, self._translators_lock:
            self._config = config
            if own_recognizer:
                self._recognizer_factory = default_recognizer_factory(config, self._home.root)
            if own_translators:
                self._translator_factory = default_translator_factory(config)
            if own_loader:
                self._named_model_loader = default_named_model_loader(config)
            self._recognizer = None
            self._other_recognizers = {}
            self._matrix = None
            self._transcriber = None
            self._named_models = {}
            self._translators = {}

    # -- the loop -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Tell the loop a job may be pending (called after every submission)."""
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Process jobs until cancelled. Start with ``nursery.start(runner.run)``."""
        self._stop_worker.clear()
        task_status.started()
        try:
            while True:
                # A fresh event before looking, so a submission after the look still wakes us.
                self._wakeup = trio.Event()
                try:
                    job = await trio.to_thread.run_sync(self._jobs.claim_next)
                except DatabaseError as error:
                    # A locked or full database: this look fails, the loop goes on.
                    self._faults.record("jobs", error)
                    job = None
                if job is None:
                    with trio.move_on_after(self._poll_interval_s):
                        await self._wakeup.wait()
                    continue
                try:
                    await self._process(job)
                except Exception as error:
                    # Its status could not be recorded; recover_interrupted requeues it.
                    self._faults.record("job", error)
                if self._after_job is not None:
                    try:
                        await trio.to_thread.run_sync(self._after_job)
                    except OSError as error:
                        self._faults.record("storage", error)
        finally:
            self._stop_worker.set()

    async def _process(self, job: JobRecord) -> None:
        event(log, logging.INFO, "job.started", job=job.job_id, kind=job.kind)
        try:
            outputs = await trio.to_thread.run_sync(self._run_job, job, abandon_on_cancel=True)
        except (MediaError, OSError, JobOptionsError) as error:
            text = str(error) or type(error).__name__
            # A full disk says so first, whatever layer reported it: that is what to fix.
            reason = _one_line(f"disk full: {text}" if is_disk_full(error) else text)
            await trio.to_thread.run_sync(
                functools.partial(self._jobs.mark_failed, job.job_id, reason=reason)
            )
            event(log, logging.WARNING, "job.failed", job=job.job_id, reason=reason)
        except Exception as error:
            reason = _one_line(f"internal error: {type(error).__name__}: {error}")
            self._faults.record("job", error)
            await trio.to_thread.run_sync(
                functools.partial(self._jobs.mark_failed, job.job_id, reason=reason)
            )
        else:
            await trio.to_thread.run_sync(
                functools.partial(self._jobs.mark_ready, job.job_id, outputs=outputs)
            )
            event(log, logging.INFO, "job.ready", job=job.job_id)
        finally:
            self._progress = None
        self.jobs_finished += 1

    def _run_job(self, job: JobRecord) -> dict[str, object]:
        """Worker thread: run one job; return what ``mark_ready`` stores."""

        def on_progress(stage: str, fraction: float) -> None:
            if self._stop_worker.is_set():
                raise _JobInterrupted
            self._progress = _Progress(job.job_id, stage, fraction)

        if job.kind == DUB_JOB_KIND:
            return self._run_dub(job, on_progress)
        if job.kind != CAPTION_JOB_KIND:
            raise JobOptionsError(f"unknown job kind {job.kind!r}")
        options = CaptionJobOptions.from_json(job.options)

        out_dir = self.output_dir(job, options)
        private = options.out_dir is None  # under the node's home: private like the rest of it
        common = functools.partial(
            caption_recording,
            Path(job.input_path),
            out_dir=out_dir,
            file_mode=0o600 if private else 0o644,
            translator_factory=self._get_translator,
            to_languages=options.to,
            progress=on_progress,
            # The job's own folder is new; a retried job replaces what its first attempt wrote.
            overwrite=private or options.force,
            formats=options.output_formats,
            layout=options.layout,
            highlight_words=options.word_timestamps,
            translated_by_whisper=options.task == "translate",
            skip_silence=options.skip_silence,
        )
        fixed_model = options.whisper is None and options.task == "transcribe"
        if fixed_model and (options.model is not None or self._transcriber_factory is not None):
            # One fixed model (a folder the job names, or a test's): no identification.
            result = common(
                # Loaded at the first slice to decode: a corrupt or silent file fails before it.
                transcriber=_TranscriberOnFirstUse(lambda: self._get_transcriber(options.model)),
                source_language=options.language or self._source_language,
            )
        else:
            english_only = options.whisper == "tiny.en"  # nothing to identify: English
            result = common(
                recognizer=self._get_recognizer(options.whisper, options.task),
                language=options.language or ("en" if english_only else None),
            )
        outputs = _outputs(result)
        outputs["model"] = options.model or "default"
        if options.transcript:
            path = out_dir / f"{Path(job.input_path).stem}.transcript.json"
            write_atomic(path, transcript_json(result).encode(), mode=0o600 if private else 0o644)
            outputs["transcript"] = str(path)
        return outputs

    def dub_output(self, job_id: str, source: Path, options: DubJobOptions) -> Path:
        """Where a dub goes: the file asked for, else ``<home>/dubs/<job id>/<stem>.<to>.mp4``."""
        if options.out is not None:
            return Path(options.out)
        return self._home.root / DUBS_DIR_NAME / job_id / f"{source.stem}.{options.to}.mp4"

    def _run_dub(
        self, job: JobRecord, on_progress: Callable[[str, float], None]
    ) -> dict[str, object]:
        from media.dub.pipeline import DubOptions, dub_video

        options = DubJobOptions.from_json(job.options)
        source = Path(job.input_path)
        out = self.dub_output(job.job_id, source, options)
        if options.out is None:
            # Under the node's home: private like the rest of it (mkdir's parents ignore modes).
            for folder in (out.parent.parent, out.parent):
                folder.mkdir(mode=0o700, exist_ok=True)
            # The folder is this job's own: a partial file there is an attempt the node died in.
            for stale in out.parent.glob(f".{out.name}.*.part"):
                stale.unlink(missing_ok=True)
        result = dub_video(
            source,
            out,
            options=DubOptions(
                target_language=options.to,
                source_language=self._source_language,
                replace=options.force,
            ),
            transcriber=self._get_transcriber(),
            translator_factory=self._get_translator,
            progress=on_progress,
        )
        return {"files": {"mp4": str(out)}, **result.summary()}

    def _get_transcriber(self, model: str | None = None) -> FeatureDecoder:
        with self._model_lock:
            if model is not None:
                named = self._named_models.get(model)
                if named is None:
                    named = self._named_model_loader(self.model_dir(model))
                    self._named_models[model] = named
                return named
            if self._transcriber is None:
                factory = self._transcriber_factory or default_transcriber_factory(self._config)
                self._transcriber = factory()
            return self._transcriber

    def model_dir(self, name: str) -> Path:
        """Where the Whisper model a job names lives (``<home>/models/whisper/<name>``)."""
        return self._home.models_dir / WHISPER_MODELS_DIR_NAME / name

    def model_names(self) -> list[str]:
        """The named models a job may ask for (folders under ``<home>/models/whisper/``)."""
        folder = self._home.models_dir / WHISPER_MODELS_DIR_NAME
        try:
            return sorted(
                path.name
                for path in folder.iterdir()
                if path.is_dir() and MODEL_NAME.fullmatch(path.name)
            )
        except OSError:
            return []

    def _get_recognizer(
        self, whisper: str | None = None, task: str = "transcribe"
    ) -> SpeechRecognizer:
        """The node's recognizer, or one for a job's ``whisper`` setting and ``task``."""
        with self._model_lock:
            if whisper is None and task == "transcribe":
                if self._recognizer is None:
                    self._recognizer = self._recognizer_factory()
                return self._recognizer
            key = (whisper, task)
            recognizer = self._other_recognizers.get(key)
            if recognizer is None:
                from media.asr import DecodeOptions
                from media.recognizer import WhisperRecognizer

                recognizer = WhisperRecognizer(
                    self._store_for(whisper), options=DecodeOptions(task=task)
                )
                self._other_recognizers[key] = recognizer
            return recognizer

    def _config_for(self, whisper: str | None) -> Config:
        """The node's config with ``models.whisper`` replaced by a job's setting."""
        if whisper is None:
            return self._config
        models = dataclasses.replace(self._config.models, whisper=whisper, whisper_dir="")
        return dataclasses.replace(self._config, models=models)

    def _store_for(self, whisper: str | None) -> WhisperStore:
        from daemon.language_setup import whisper_store_for

        return whisper_store_for(self._config_for(whisper), self._home.root)

    def _get_matrix(self) -> LanguageMatrix:
        from daemon.language_setup import language_matrix_for

        with self._model_lock:
            if self._matrix is None:
                self._matrix = language_matrix_for(self._config)
            return self._matrix

    def _get_translator(self, source: str, target: str) -> Translator:
        key = (language_key(source), language_key(target))
        with self._translators_lock:
            translator = self._translators.get(key)
            if translator is None:
                translator = self._translator_factory(source, target)
                self._translators[key] = translator
            return translator

    # -- status RPC -------------------------------------------------------------------------------

    def rpc_handlers(self) -> dict[str, Handler]:
        """``caption.submit`` and ``caption.get``, to merge into the node's RPC handlers."""

        async def submit(params: Any) -> object:
            return await self.submit(params)

        async def get(params: Any) -> object:
            job_id = _mapping(params).get("id")
            if not isinstance(job_id, str) or not job_id:
                raise RpcHandlerError("invalid_params", "id must be a job id string")
            record = await trio.to_thread.run_sync(self._jobs.get, job_id)
            if record is None:
                raise RpcHandlerError("unknown_job", f"no job with id {job_id!r}")
            shown = job_dict(record)
            current = self.progress
            if record.status is JobStatus.PROCESSING and current and current["id"] == job_id:
                shown["progress"] = {"stage": current["stage"], "fraction": current["fraction"]}
            return shown

        async def submit_dub(params: Any) -> object:
            return await self.submit_dub(params)

        # A job id names one job whatever its kind: "dub.get" is "caption.get" by another name.
        return {
            "caption.submit": submit,
            "caption.get": get,
            "dub.submit": submit_dub,
            "dub.get": get,
        }

    async def submit_dub(self, params: object) -> dict[str, object]:
        """Validate a ``dub.submit`` request (path, to, out, force), queue it; the job dict."""
        request = _mapping(params)
        unknown = set(request) - {"path", "to", "out", "force"}
        if unknown:
            raise RpcHandlerError("invalid_params", f"unknown parameters: {sorted(unknown)}")
        path = _absolute_path(request.get("path"), "path")
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise RpcHandlerError("invalid_params", f"{str(path)!r} {what}")
        out_value = request.get("out")
        out = None if out_value is None else _absolute_path(out_value, "out")
        force = request.get("force", False)
        to = request.get("to")
        if not isinstance(to, str) or not isinstance(force, bool):
            raise RpcHandlerError("invalid_params", "to must be a language tag, force a boolean")
        try:
            options = DubJobOptions(to=to, out=None if out is None else str(out), force=force)
        except (JobOptionsError, MediaError) as error:
            raise RpcHandlerError("invalid_params", str(error)) from None
        if out is not None and (out == path or (out.exists() and not force)):
            reason = "is the input" if out == path else "exists (force to replace it)"
            raise RpcHandlerError("invalid_params", f"{str(out)!r} {reason}")
        if out is not None and not out.parent.is_dir():
            raise RpcHandlerError("invalid_params", f"{str(out.parent)!r} is not a folder")
        if language_key(to) == language_key(self._source_language):
            raise RpcHandlerError("invalid_params", f"the video is already in {to!r}")
        try:
            await trio.to_thread.run_sync(self._get_translator, self._source_language, to)
        except UnsupportedLanguagePairError as error:
            raise RpcHandlerError("unsupported_language", str(error)) from None
        except MediaError as error:
            raise RpcHandlerError("translation_unavailable", str(error)) from None
        record = self._jobs.create(
            kind=DUB_JOB_KIND, input_path=str(path), options=options.to_json()
        )
        event(log, logging.INFO, "job.submitted", job=record.job_id, input=str(path), kind="dub")
        self.wake()
        return job_dict(record)

    async def submit(self, params: object) -> dict[str, object]:
        """Validate a ``caption.submit`` request, queue the job, wake the loop; the job dict."""
        request = _mapping(params)
        unknown = set(request) - {
            "path",
            "to",
            "out_dir",
            "transcript",
            "model",
            "language",
            *_CLI_OPTION_NAMES,
        }
        if unknown:
            raise RpcHandlerError("invalid_params", f"unknown parameters: {sorted(unknown)}")
        path = _absolute_path(request.get("path"), "path")
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise RpcHandlerError("invalid_params", f"{str(path)!r} {what}")
        to = request.get("to", [])
        if not isinstance(to, list) or not all(isinstance(tag, str) for tag in to):
            raise RpcHandlerError("invalid_params", "to must be a list of language tags")
        language = request.get("language")
        if language is not None and not isinstance(language, str):
            raise RpcHandlerError("invalid_params", "language must be a language tag")
        out_dir_value = request.get("out_dir")
        out_dir = None if out_dir_value is None else _absolute_path(out_dir_value, "out_dir")
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise RpcHandlerError("invalid_params", f"{str(out_dir)!r} is not a folder")
        transcript = request.get("transcript", False)
        if not isinstance(transcript, bool):
            raise RpcHandlerError("invalid_params", "transcript must be true or false")
        model = request.get("model")
        if model is not None:
            if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
                raise RpcHandlerError("invalid_params", "model must be a model name")
            if not self.model_dir(model).is_dir():
                raise RpcHandlerError(
                    "unknown_model",
                    f"no Whisper model named {model!r} (known: "
                    f"{', '.join(self.model_names()) or 'none'}; add one as "
                    f"{self.model_dir('NAME')})",
                )
        try:
            options = CaptionJobOptions(
                to=tuple(to),
                out_dir=None if out_dir is None else str(out_dir),
                transcript=transcript,
                model=model,
                language=language,
                **_cli_options_from_json(request),
            )
        except (JobOptionsError, MediaError) as error:
            raise RpcHandlerError("invalid_params", str(error)) from None
        whisper = options.whisper
        if whisper is not None and whisper not in WHISPER_NAMES and not Path(whisper).is_dir():
            raise RpcHandlerError("unknown_model", f"{whisper!r} is not a folder")
        if options.task == "translate":
            try:
                refusal = await trio.to_thread.run_sync(
                    whisper_cannot_translate, self._store_for(whisper)
                )
            except MediaError as error:
                raise RpcHandlerError("unknown_model", str(error)) from None
            if refusal is not None:
                raise RpcHandlerError("unsupported_task", refusal)
        if self._transcriber_factory is None or whisper is not None or options.task != "transcribe":
            await self._check_languages(options)
            source = options.language
        else:
            source = self._source_language
        if options.task == "translate":
            source = "en"
        for target in options.to:
            if source is None or language_key(target) == language_key(source):
                continue
            try:
                # Building a translator loads its model: off the loop, and cached for the job.
                await trio.to_thread.run_sync(self._get_translator, source, target)
            except UnsupportedLanguagePairError as error:
                raise RpcHandlerError("unsupported_language", str(error)) from None
            except MediaError as error:
                raise RpcHandlerError("translation_unavailable", str(error)) from None
        record = await trio.to_thread.run_sync(
            functools.partial(
                self._jobs.create,
                kind=CAPTION_JOB_KIND,
                input_path=str(path),
                options=options.to_json(),
            )
        )
        event(log, logging.INFO, "job.submitted", job=record.job_id, input=str(path))
        self.wake()
        return job_dict(record)

    async def _check_languages(self, options: CaptionJobOptions) -> None:
        """Refuse, in one line, a spoken language or a target this install cannot serve."""
        if options.whisper is None:
            matrix = await trio.to_thread.run_sync(self._get_matrix)
        else:
            from daemon.language_setup import language_matrix_for

            config = self._config_for(options.whisper)
            matrix = await trio.to_thread.run_sync(language_matrix_for, config)
        # Whisper's translate task writes English, whatever was spoken.
        written = "en" if options.task == "translate" else options.language
        try:
            if options.language is not None and written is not None:
                matrix.check_speaker(options.language)
                for target in options.to:
                    matrix.check_translation(written, target)
            else:
                for target in options.to:
                    key = language_key(target)
                    if not any(pair[1] == key for pair in matrix.translate):
                        raise LanguageUnavailableError(
                            f"cannot translate into {target!r}: no installed engine produces it"
                        )
        except LanguageUnavailableError as error:
            raise RpcHandlerError("unsupported_language", str(error)) from None


def whisper_cannot_translate(store: WhisperStore) -> str | None:
    """Why ``store``'s model cannot run Whisper's translate task, or ``None`` when it can
    (``auto``: English speech goes to tiny.en, whose translation is itself; the rest to base).
    Loads a folder's model to ask it: call from a worker thread."""
    from media.models import AUTO, TINY_EN

    setting = store.choice.setting
    if setting == AUTO:
        return None
    if setting == TINY_EN:
        multilingual = False
    else:
        multilingual = bool(store.load(store.folder_for(setting)).model.is_multilingual)
    if multilingual:
        return None
    return f"the Whisper model {setting!r} is English-only: it cannot translate (--model base)"


class _TranscriberOnFirstUse:
    """A ``FeatureDecoder`` that asks for the (cached) model only when it is first needed."""

    def __init__(self, get: Callable[[], FeatureDecoder]) -> None:
        self._get = get

    def transcribe_features(
        self, mel: FloatArray, *, on_progress: Callable[[float], None] | None = None
    ) -> Transcript:
        return self._get().transcribe_features(mel, on_progress=on_progress)


def transcript_json(result: CaptionResult) -> str:
    """Every track's cues as JSON; the source language's cues carry their words' times."""
    tracks = {
        language: [
            {
                "start_s": round(cue.start_s, 3),
                "end_s": round(cue.end_s, 3),
                "text": cue.text,
                "words": [
                    {"word": w.word, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3)}
                    for w in cue.words
                ],
            }
            for cue in cues
        ]
        for language, cues in result.tracks.items()
    }
    return json.dumps({"language": result.language, "tracks": tracks}, ensure_ascii=False)


def _outputs(result: CaptionResult) -> dict[str, object]:
    return {
        "files": {key: str(path) for key, path in result.outputs.items()},
        "language": result.language,
        "language_probability": result.language_probability,
        "cue_count": result.cue_count,
        "duration_s": result.duration_s,
    }


def _mapping(params: object) -> Mapping[str, object]:
    if not isinstance(params, Mapping):
        raise RpcHandlerError("invalid_params", "params must be a map")
    return params


def _absolute_path(value: object, name: str) -> Path:
    if not isinstance(value, str) or not value or len(value) > MAX_PATH_CHARS or "\x00" in value:
        raise RpcHandlerError("invalid_params", f"{name} must be a path string")
    path = Path(value)
    if not path.is_absolute():
        raise RpcHandlerError("invalid_params", f"{name} must be an absolute path, got {value!r}")
    return path


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
