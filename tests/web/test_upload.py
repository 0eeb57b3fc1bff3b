"""The multipart sink alone (sans-IO): bytes in, a file and fields out, every limit enforced
however the body is cut into chunks. Oracle for well-formed bodies: httpx's own encoder."""

from __future__ import annotations

import io

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.web.upload import BadUploadError, MultipartSink, NotMediaError, UploadTooLargeError


def _encoded(files: dict, data: dict | None = None) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def _feed(content_type: str, body: bytes, cuts: list[int], limit: int = 10**6):
    out = io.BytesIO()
    sink = MultipartSink(content_type, out, max_file_bytes=limit)
    start = 0
    for cut in [*sorted(cuts), len(body)]:
        sink.feed(body[start:cut])
        start = max(start, cut)
    sink.finish()
    return sink, out.getvalue()


@settings(max_examples=50, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3500), max_size=8),
)
def test_file_and_fields_survive_any_chunking(payload: bytes, cuts: list[int]) -> None:
    content_type, body = _encoded({"file": ("a b/../c.wav", payload, "audio/wav")}, {"to": "pt,de"})
    sink, written = _feed(content_type, body, [min(cut, len(body)) for cut in cuts])
    assert written == payload
    assert sink.filename == "c.wav"  # no folder part survives
    assert sink.fields == {"to": ["pt,de"]}
    assert sink.file_bytes == len(payload)


def test_the_limit_stops_the_file_mid_stream() -> None:
    content_type, body = _encoded({"file": ("a.wav", b"x" * 5000, "audio/wav")})
    out = io.BytesIO()
    sink = MultipartSink(content_type, out, max_file_bytes=4096)
    with pytest.raises(UploadTooLargeError):
        for start in range(0, len(body), 512):
            sink.feed(body[start : start + 512])
    assert len(out.getvalue()) <= 4096


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"--B\r\n" + b"X-A: 1\r\n" * 40 + b"\r\n", "(?i)header"),
        (b'--B\r\nContent-Disposition: form-data; name="to"\r\n\r\n' + b"p" * 5000, "longer than"),
        (b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B--\r\n", "Content-Disposition"),
        (b"garbage without a boundary", "malformed multipart"),
    ],
)
def test_hostile_bodies_are_refused_with_a_reason(body: bytes, message: str) -> None:
    sink = MultipartSink("multipart/form-data; boundary=B", io.BytesIO(), max_file_bytes=10**6)
    with pytest.raises(BadUploadError, match=message):
        sink.feed(body)
        sink.finish()


def test_two_files_or_none_are_refused() -> None:
    content_type, body = _encoded({"file": ("a.wav", b"1"), "other": ("b.wav", b"2")})
    with pytest.raises(BadUploadError, match="exactly one file"):
        _feed(content_type, body, [])
    content_type, body = _encoded({"file": ("a.wav", b"")})
    with pytest.raises(NotMediaError, match="empty"):
        _feed(content_type, body, [])
    with pytest.raises(BadUploadError, match="multipart/form-data"):
        MultipartSink("application/json", io.BytesIO(), max_file_bytes=1)
