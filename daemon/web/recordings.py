"""Recordings uploaded through the web page, and their caption jobs on the node's one queue.

Theory of operation
-------------------
Each recording is a folder ``<home>/recordings/<id>/`` holding the media (``media.<ext>``) and
``recording.json`` (its name, type, duration, the languages asked for, and the ids of its caption
jobs, newest last). Ids are 12 hex digits of milliseconds then 8 random hex digits, so folder
names sort by upload time and a page of the list reads only its own folders. An id is checked
against :data:`RECORDING_ID` before it names any path: nothing a client sends reaches the file
system unchecked.

An upload is streamed to ``recordings/.incoming/<random>.part``; it becomes a recording only once
it fit the size limit, PyAV found playable audio in it, and the caption job was accepted by
:meth:`daemon.jobs.JobRunner.submit` (the same call the ``caption.submit`` RPC behind
``parley caption`` makes, so the CLI's jobs and the page's share one queue). Any refusal deletes
the partial file (and the folder, if it got that far): a refused upload leaves nothing on disk.

A recording's status is its newest job's: ``pending → processing → ready | failed``, with the
runner's progress while processing, the detected language and the tracks when ready, the job's
one-line reason when failed. ``regenerate`` queues a new job for the same media.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from common.atomic import write_atomic
from daemon.database import JobRecord, JobStatus, JobStore
from daemon.jobs import JobRunner
from daemon.rpc import RpcHandlerError
from daemon.web.upload import MultipartSink, UploadTooLargeError, probe_media

__all__ = [
    "CAPTION_FORMATS",
    "MAX_PAGE_SIZE",
    "RECORDING_ID",
    "Recording",
    "RecordingError",
    "RecordingPage",
    "RecordingService",
    "RecordingsRefusedError",
    "UnknownRecordingError",
    "check_recording_id",
    "parse_languages",
]

RECORDINGS_DIR: Final = "recordings"
INCOMING_DIR: Final = ".incoming"
METADATA_FILE: Final = "recording.json"
RECORDING_ID: Final = re.compile(r"[0-9a-f]{20}")
LANGUAGE_TAG: Final = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?")
MAX_PAGE_SIZE: Final = 200
MAX_LANGUAGES: Final = 8

CAPTION_FORMATS: Final = ("vtt", "srt", "json")


class RecordingError(Exception):
    """Base of this module's errors; ``status`` is the HTTP status, ``str()`` the reason."""

    status = 400


class UnknownRecordingError(RecordingError):
    status = 404


class RecordingsRefusedError(RecordingError):
    """The request is well formed but cannot be served (no such track yet, a bad language)."""

    status = 422


@dataclass(frozen=True, slots=True)
class Recording:
    """A recording as the API shows it (see :meth:`as_json`)."""

    recording_id: str
    name: str
    created_at: float
    size_bytes: int
    media_type: str
    duration_s: float
    has_video: bool
    requested_languages: tuple[str, ...]
    model: str
    whisper: str | None
    task: str
    spoken_language: str | None
    skip_silence: bool
    job_id: str | None
    status: str
    progress: float | None
    stage: str | None
    language: str | None
    languages: tuple[str, ...]
    reason: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.recording_id,
            "name": self.name,
            "created_at": self.created_at,
            "size_bytes": self.size_bytes,
            "media_type": self.media_type,
            "duration_s": self.duration_s,
            "has_video": self.has_video,
            "requested_languages": list(self.requested_languages),
            "model": self.model,
            "whisper": self.whisper,
            "task": self.task,
            "spoken_language": self.spoken_language,
            "skip_silence": self.skip_silence,
            "job_id": self.job_id,
            "status": self.status,
            "progress": self.progress,
            "stage": self.stage,
            "language": self.language,
            "languages": list(self.languages),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class RecordingPage:
    items: tuple[Recording, ...]
    total: int
    offset: int
    limit: int

    def as_json(self) -> dict[str, object]:
        return {
            "items": [item.as_json() for item in self.items],
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
        }


def check_recording_id(value: str) -> str:
    """``value`` if it is a well-formed recording id; else :class:`UnknownRecordingError`."""
    if not RECORDING_ID.fullmatch(value):
        raise UnknownRecordingError("no such recording")
    return value


def parse_languages(values: Sequence[str]) -> tuple[str, ...]:
    """Language tags from form fields or a query (``pt``, ``pt,de``, repeated fields)."""
    tags: list[str] = []
    for value in values:
        for piece in value.replace(";", ",").split(","):
            tag = piece.strip()
            if not tag:
                continue
            if not LANGUAGE_TAG.fullmatch(tag):
                raise RecordingsRefusedError(f"{tag[:20]!r} is not a language tag (like 'pt')")
            if tag not in tags:
                tags.append(tag)
    if len(tags) > MAX_LANGUAGES:
        raise RecordingsRefusedError(f"at most {MAX_LANGUAGES} languages")
    return tuple(tags)


class RecordingService:
    """Upload, list, inspect, caption and regenerate recordings (the API and pages call this)."""

    def __init__(
        self,
        *,
        home_root: Path,
        jobs: JobStore,
        runner: JobRunner,
        max_upload_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = home_root / RECORDINGS_DIR
        self._jobs = jobs
        self._runner = runner
        self._max_upload_bytes = max_upload_bytes
        self._clock = clock

    @property
    def max_upload_bytes(self) -> int:
        return self._max_upload_bytes

    def model_names(self) -> list[str]:
        """Whisper models a regeneration may name, besides the node's default."""
        return self._runner.model_names()

    # -- upload ---------------------------------------------------------------------------------

    async def upload(
        self,
        content_type: str,
        body: AsyncGenerator[bytes, None],
        *,
        content_length: int | None = None,
    ) -> Recording:
        """Store an uploaded recording and queue its caption job; raises ``UploadError`` or
        ``RecordingError`` with nothing left on disk."""
        if content_length is not None and content_length > self._max_upload_bytes + 64 * 1024:
            raise UploadTooLargeError(
                f"the upload is larger than the {self._max_upload_bytes // 2**20} MiB limit "
                "(web.max_upload_mb)"
            )
        incoming = self._root / INCOMING_DIR
        incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = incoming / f"{secrets.token_hex(8)}.part"
        folder: Path | None = None
        try:
            with part.open("xb") as file:
                sink = MultipartSink(content_type, file, max_file_bytes=self._max_upload_bytes)
                async with contextlib.aclosing(body):
                    async for chunk in body:
                        sink.feed(chunk)
                sink.finish()
            info = await trio.to_thread.run_sync(probe_media, part)
            languages = parse_languages(sink.fields.get("to", []))
            recording_id = self._new_id()
            folder = self._root / recording_id
            folder.mkdir(mode=0o700)
            media = folder / f"media.{info.extension}"
            part.rename(media)
            job = await self._submit(media, languages)
            metadata = {
                "id": recording_id,
                "name": sink.filename or "recording",
                "created_at": self._clock(),
                "size_bytes": sink.file_bytes,
                "media_type": info.media_type,
                "extension": info.extension,
                "duration_s": info.duration_s,
                "has_video": info.has_video,
                "languages": list(languages),
                "jobs": [job.job_id],
            }
            self._write_metadata(folder, metadata)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._view(metadata)

    async def _submit(
        self,
        media: Path,
        languages: Sequence[str],
        model: str | None = None,
        options: Mapping[str, object] | None = None,
    ) -> JobRecord:
        request: dict[str, object] = {"path": str(media), "to": list(languages), "transcript": True}
        if model is not None:
            request["model"] = model
        request.update(options or {})
        try:
            job = await self._runner.submit(request)
        except RpcHandlerError as error:
            raise RecordingsRefusedError(error.error.message) from None
        record = self._jobs.get(str(job["id"]))
        assert record is not None
        return record

    def _new_id(self) -> str:
        millis = int(self._clock() * 1000)
        return f"{millis:012x}"[-12:] + secrets.token_hex(4)

    # -- reading --------------------------------------------------------------------------------

    def list(self, *, offset: int = 0, limit: int = 50) -> RecordingPage:
        """Newest first; reads only the folders of the page asked for."""
        if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
            raise RecordingError(f"need offset >= 0 and 1 <= limit <= {MAX_PAGE_SIZE}")
        try:
            names = sorted(
                (name for name in _listdir(self._root) if RECORDING_ID.fullmatch(name)),
                reverse=True,
            )
        except FileNotFoundError:
            names = []
        items: list[Recording] = []
        for name in names[offset : offset + limit]:
            metadata = self._read_metadata(name)
            if metadata is not None:
                items.append(self._view(metadata))
        return RecordingPage(tuple(items), len(names), offset, limit)

    def get(self, recording_id: str) -> Recording:
        metadata = self._read_metadata(check_recording_id(recording_id))
        if metadata is None:
            raise UnknownRecordingError("no such recording")
        return self._view(metadata)

    def media(self, recording_id: str) -> tuple[Path, str]:
        """The media file and its MIME type."""
        metadata = self._require(recording_id)
        path = self._root / recording_id / f"media.{metadata['extension']}"
        if not path.is_file():
            raise UnknownRecordingError("the recording's media file is gone")
        return path, str(metadata["media_type"])

    def captions(self, recording_id: str, language: str, caption_format: str) -> tuple[str, str]:
        """A track's text and MIME type; ``json`` carries word times for the source language."""
        if caption_format not in CAPTION_FORMATS:
            raise RecordingsRefusedError(f"format must be one of {', '.join(CAPTION_FORMATS)}")
        (language,) = parse_languages([language]) or ("",)
        metadata = self._require(recording_id)
        job = self._latest_job(metadata)
        if job is None or job.status is not JobStatus.READY:
            raise RecordingsRefusedError("the captions are not ready")
        outputs = job.outputs
        if caption_format == "json":
            return _json_track(outputs, language), "application/json"
        files = outputs.get("files")
        path = files.get(f"{language}.{caption_format}") if isinstance(files, Mapping) else None
        if not isinstance(path, str):
            raise RecordingsRefusedError(f"no {language!r} track for this recording")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise RecordingsRefusedError(f"the track file cannot be read: {error}") from None
        media_type = "text/vtt" if caption_format == "vtt" else "application/x-subrip"
        return text, f"{media_type}; charset=utf-8"

    # -- regenerate -----------------------------------------------------------------------------

    async def regenerate(
        self,
        recording_id: str,
        languages: Sequence[str] | None = None,
        *,
        model: str | None = None,
        options: Mapping[str, object] | None = None,
    ) -> Recording:
        """Queue a new caption job for the same media: other languages, another Whisper model
        from ``<home>/models/whisper/``, and more ``caption.submit`` parameters in ``options``
        (checked by :mod:`daemon.web.caption_choice`); the languages default to the last ones."""
        metadata = self._require(recording_id)
        job = self._latest_job(metadata)
        if job is not None and job.status in (JobStatus.PENDING, JobStatus.PROCESSING):
            raise RecordingsRefusedError("a caption job for this recording is already queued")
        chosen = (
            tuple(languages)
            if languages is not None
            else tuple(str(tag) for tag in _as_list(metadata.get("languages")))
        )
        path, _ = self.media(recording_id)
        new_job = await self._submit(path, chosen, model, options)
        metadata["languages"] = list(chosen)
        metadata["jobs"] = [*_as_list(metadata.get("jobs")), new_job.job_id][-20:]
        self._write_metadata(self._root / recording_id, metadata)
        return self._view(metadata)

    # -- helpers --------------------------------------------------------------------------------

    def _require(self, recording_id: str) -> dict[str, object]:
        metadata = self._read_metadata(check_recording_id(recording_id))
        if metadata is None:
            raise UnknownRecordingError("no such recording")
        return metadata

    def _read_metadata(self, recording_id: str) -> dict[str, object] | None:
        try:
            data = json.loads((self._root / recording_id / METADATA_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("id") != recording_id:
            return None
        return data

    def _write_metadata(self, folder: Path, metadata: Mapping[str, object]) -> None:
        write_atomic(folder / METADATA_FILE, json.dumps(metadata).encode(), mode=0o600)

    def _latest_job(self, metadata: Mapping[str, object]) -> JobRecord | None:
        jobs = _as_list(metadata.get("jobs"))
        return self._jobs.get(str(jobs[-1])) if jobs else None

    def _view(self, metadata: Mapping[str, object]) -> Recording:
        job = self._latest_job(metadata)
        progress: float | None = None
        stage: str | None = None
        language: str | None = None
        languages: tuple[str, ...] = ()
        reason: str | None = None
        if job is None:
            status, reason = JobStatus.FAILED.value, "its caption job is gone"
        else:
            status = job.status.value
            reason = job.reason
            if job.status is JobStatus.PROCESSING:
                running = self._runner.progress
                if running is not None and running["id"] == job.job_id:
                    fraction = running["fraction"]
                    progress = float(fraction) if isinstance(fraction, int | float) else None
                    stage = str(running["stage"])
            elif job.status is JobStatus.READY:
                progress = 1.0
                detected = job.outputs.get("language")
                language = detected if isinstance(detected, str) else None
                files = job.outputs.get("files")
                if isinstance(files, Mapping):
                    found = [key.rsplit(".", 1)[0] for key in files if key.endswith(".vtt")]
                    languages = tuple(sorted(found, key=lambda tag: (tag != language, tag)))
        options: Mapping[str, object] = job.options if job is not None else {}
        return Recording(
            recording_id=str(metadata["id"]),
            name=str(metadata.get("name", "")),
            created_at=_number(metadata.get("created_at")),
            size_bytes=int(_number(metadata.get("size_bytes"))),
            media_type=str(metadata.get("media_type", "")),
            duration_s=_number(metadata.get("duration_s")),
            has_video=bool(metadata.get("has_video")),
            requested_languages=tuple(str(tag) for tag in _as_list(metadata.get("languages"))),
            model=str(options.get("model") or "default"),
            whisper=_text_or_none(options.get("whisper")),
            task=str(options.get("task") or "transcribe"),
            spoken_language=_text_or_none(options.get("language")),
            skip_silence=options.get("skip_silence") is not False,
            job_id=None if job is None else job.job_id,
            status=status,
            progress=progress,
            stage=stage,
            language=language,
            languages=languages,
            reason=reason,
        )


def _json_track(outputs: Mapping[str, object], language: str) -> str:
    path = outputs.get("transcript")
    if not isinstance(path, str):
        raise RecordingsRefusedError("this job kept no transcript; regenerate the captions")
    try:
        document = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise RecordingsRefusedError(f"the transcript cannot be read: {error}") from None
    tracks = document.get("tracks") if isinstance(document, dict) else None
    cues = tracks.get(language) if isinstance(tracks, dict) else None
    if cues is None:
        raise RecordingsRefusedError(f"no {language!r} track for this recording")
    return json.dumps({"language": language, "source": document.get("language"), "cues": cues})


def _listdir(folder: Path) -> list[str]:
    return os.listdir(folder)


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
