"""Uploads: a multipart body streamed to one file under a size limit, then checked with PyAV.

:class:`MultipartSink` is the sans-IO part: it is fed the body's chunks as they arrive and writes
the one file part into a file object it was given, keeping the small text fields; it raises
:class:`UploadTooLargeError` the moment the file passes the limit, so the caller can stop reading
and delete what was written. :func:`probe_media` then opens the file with PyAV (in a worker
thread: it reads the file) and says what it is, or why it is not a recording a browser can play
and the captioner can hear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = [
    "FILE_FIELD",
    "BadUploadError",
    "MediaInfo",
    "MultipartSink",
    "NotMediaError",
    "UploadError",
    "UploadTooLargeError",
    "probe_media",
]

FILE_FIELD: Final = "file"
#: Limits on the small fields that come with a file.
MAX_FIELD_BYTES: Final = 4096
MAX_FIELDS: Final = 32
MAX_FILENAME_CHARS: Final = 255
#: Longest audio or video accepted (the job runs one at a time; a day-long file blocks it).
MAX_DURATION_S: Final = 4 * 3600.0


class UploadError(Exception):
    """An upload that is refused; ``status`` is the HTTP status, ``str()`` the reason."""

    status = 400


class BadUploadError(UploadError):
    """Not a well-formed multipart upload with one file."""


class UploadTooLargeError(UploadError):
    status = 413


class NotMediaError(UploadError):
    """The file is not audio or video that the page can play and the captioner can hear."""

    status = 415


@dataclass(slots=True)
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class MultipartSink:
    """Parses ``multipart/form-data`` chunk by chunk; the file part goes into ``file``."""

    def __init__(self, content_type: str, file: BinaryIO, *, max_file_bytes: int) -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise BadUploadError("send the recording as multipart/form-data (field 'file')")
        self._file = file
        self._max_file_bytes = max_file_bytes
        self.file_bytes = 0
        self.filename: str | None = None
        self.fields: dict[str, list[str]] = {}
        self._part: _Part | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        # python-multipart bounds the headers of a part (8, of 4 KiB); this bounds the rest.
        try:
            self._parser.write(chunk)
        except MultipartParseError as error:
            raise BadUploadError(f"malformed multipart body: {error}") from None

    def finish(self) -> None:
        """The body ended: check that it was complete and held a file."""
        try:
            self._parser.finalize()
        except MultipartParseError as error:
            raise BadUploadError(f"malformed multipart body: {error}") from None
        if not self._ended:
            raise BadUploadError("the multipart body ended early")
        if self.filename is None:
            raise BadUploadError(f"no file in the upload (send it as the '{FILE_FIELD}' field)")
        if self.file_bytes == 0:
            raise NotMediaError("the file is empty")

    # -- parser callbacks -----------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]
        if len(self._header_field) > MAX_FIELD_BYTES:
            raise BadUploadError("a multipart header is too long")

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise BadUploadError("a multipart header is too long")

    def _on_header_end(self) -> None:
        assert self._part is not None
        name = self._header_field.decode("latin-1").lower()
        self._part.headers[name] = self._header_value.decode("utf-8", "replace")
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        part = self._part
        assert part is not None
        disposition, params = parse_options_header(part.headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise BadUploadError("a multipart part without Content-Disposition: form-data; name")
        part.name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            if part.name != FILE_FIELD or self.filename is not None:
                raise BadUploadError(f"send exactly one file, as the '{FILE_FIELD}' field")
            filename = params[b"filename"].decode("utf-8", "replace")
            part.filename = Path(filename.replace("\\", "/")).name[:MAX_FILENAME_CHARS]
            self.filename = part.filename or "recording"
        elif sum(len(values) for values in self.fields.values()) >= MAX_FIELDS:
            raise BadUploadError(f"more than {MAX_FIELDS} form fields")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        if part.filename is not None:
            self.file_bytes += end - start
            if self.file_bytes > self._max_file_bytes:
                raise UploadTooLargeError(
                    f"the file is larger than the {self._max_file_bytes // 2**20} MiB limit "
                    "(web.max_upload_mb)"
                )
            self._file.write(data[start:end])
            return
        part.data += data[start:end]
        if len(part.data) > MAX_FIELD_BYTES:
            raise BadUploadError(f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _on_part_end(self) -> None:
        part = self._part
        assert part is not None
        if part.filename is None:
            self.fields.setdefault(part.name, []).append(part.data.decode("utf-8", "replace"))
        self._part = None

    def _on_end(self) -> None:
        self._ended = True


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What PyAV found in an upload: the container, its streams, and how the page serves it."""

    container: str
    media_type: str
    extension: str
    duration_s: float
    has_video: bool


# PyAV's demuxer names -> (extension, audio-only MIME type, with-video MIME type).
_PLAYABLE: Final = {
    "mov,mp4,m4a,3gp,3g2,mj2": ("mp4", "audio/mp4", "video/mp4"),
    "matroska,webm": ("webm", "audio/webm", "video/webm"),
    "ogg": ("ogg", "audio/ogg", "video/ogg"),
    "wav": ("wav", "audio/wav", None),
    "mp3": ("mp3", "audio/mpeg", None),
    "flac": ("flac", "audio/flac", None),
}


def probe_media(path: Path) -> MediaInfo:
    """Open ``path`` with PyAV: an audio stream that decodes, in a container browsers play.

    Blocking (reads the file): call it from a worker thread. Raises :class:`NotMediaError`.
    """
    import av

    try:
        with av.open(str(path), mode="r") as container:
            name = container.format.name
            audio = container.streams.audio
            has_video = bool(container.streams.video)
            if not audio:
                raise NotMediaError("the file has no audio stream: there is nothing to caption")
            duration_s = (container.duration or 0) / 1_000_000
            decoded = False
            for _frame in container.decode(audio=0):
                decoded = True
                break
    except NotMediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as error:
        raise NotMediaError(f"not a recording PyAV can read: {_one_line(error)}") from None
    if not decoded:
        raise NotMediaError("the audio stream holds no decodable audio")
    playable = _PLAYABLE.get(name)
    if playable is None:
        raise NotMediaError(
            f"{name!r} files do not play in browsers; upload MP4, WebM, Ogg, WAV, MP3 or FLAC"
        )
    extension, audio_type, video_type = playable
    if has_video and video_type is None:
        has_video = False
    if duration_s > MAX_DURATION_S:
        raise NotMediaError(f"the recording is longer than {MAX_DURATION_S / 3600:.0f} hours")
    media_type = video_type if has_video and video_type is not None else audio_type
    return MediaInfo(
        container=name,
        media_type=media_type,
        extension=extension,
        duration_s=duration_s,
        has_video=has_video,
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]
