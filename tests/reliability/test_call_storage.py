"""Call and caption files: language tags that cannot reach file names, private files, and a
bound on the disk ``calls/`` and ``captions/`` use (issue 11, item 10)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.storage import StorageBound
from media.errors import MediaError
from media.subtitles import LiveSubtitleWriter, SubtitleError, SubtitleFormat, track_path
from media.translate import language_key


@pytest.mark.parametrize("tag", ["pt\n", "en\n", "pt-BR\n", "pt\r", " pt", "pt/../x"])
def test_a_language_tag_must_match_whole(tag):
    with pytest.raises(MediaError):
        language_key(tag)
    with pytest.raises(SubtitleError):
        track_path(Path("/tmp/call"), tag, SubtitleFormat.WEBVTT)


def test_live_caption_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        writer = LiveSubtitleWriter(tmp_path / "call.en.vtt", SubtitleFormat.WEBVTT)
        writer.close()
    finally:
        os.umask(old)
    assert (tmp_path / "call.en.vtt").stat().st_mode & 0o777 == 0o600


def _folder(root: Path, name: str, size: int, mtime: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(b"x" * size)
    os.utime(folder / "data.bin", (mtime, mtime))
    os.utime(folder, (mtime, mtime))
    return folder


def test_the_oldest_folders_go_first_until_under_max_bytes(tmp_path):
    calls, captions = tmp_path / "calls", tmp_path / "captions"
    now = 1_000_000.0
    _folder(calls, "old-call", 400, now - 300)
    _folder(captions, "old-job", 400, now - 200)
    _folder(calls, "new-call", 400, now - 100)
    bound = StorageBound([calls, captions], max_bytes=900, keep_days=0, clock=lambda: now)
    report = bound.enforce()
    assert sorted(p.name for p in [*calls.iterdir(), *captions.iterdir()]) == [
        "new-call",
        "old-job",
    ]
    assert report.bytes_used == 800 and report.deleted_folders == 1
    status = bound.status()
    assert status["bytes_used"] == 800 and status["max_bytes"] == 900


def test_folders_older_than_keep_days_are_deleted_but_never_one_in_use(tmp_path):
    calls = tmp_path / "calls"
    now = 1_000_000.0
    running = _folder(calls, "running", 10, now - 10 * 86400)
    _folder(calls, "stale", 10, now - 10 * 86400)
    _folder(calls, "fresh", 10, now - 86400)
    bound = StorageBound([calls], max_bytes=0, keep_days=7, clock=lambda: now)
    bound.enforce(in_use={running})
    assert sorted(p.name for p in calls.iterdir()) == ["fresh", "running"]


def test_a_symlink_in_calls_is_removed_as_a_link_not_followed(tmp_path):
    calls, outside = tmp_path / "calls", tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"y" * 100)
    calls.mkdir()
    (calls / "link").symlink_to(outside)
    os.utime(calls / "link", (1.0, 1.0), follow_symlinks=False)
    StorageBound([calls], max_bytes=1, keep_days=0).enforce()
    assert (outside / "precious").exists()
    assert not (calls / "link").exists()
