"""A caption job's options carry ``parley caption``'s flags (issue 19): stored and read back,
rows written before them read as the defaults, bad values refused in one line."""

from __future__ import annotations

import pytest

from daemon.jobs import CaptionJobOptions, JobOptionsError
from media.caption_formats import OutputFormat
from media.errors import MediaError


def test_flags_round_trip_and_old_rows_read_as_defaults() -> None:
    options = CaptionJobOptions(
        to=("pt",),
        formats=("txt", "json"),
        max_line_width=16,
        max_line_count=1,
        word_timestamps=True,
        whisper="/models/large",
        task="translate",
        skip_silence=False,
        force=True,
    )
    stored = options.to_json()
    assert stored["formats"] == ["txt", "json"] and stored["task"] == "translate"
    assert CaptionJobOptions.from_json(stored) == options
    assert options.output_formats == (OutputFormat.TXT, OutputFormat.JSON)
    assert options.layout.max_line_chars == 16 and options.layout.max_lines == 1
    # A row from before the flags: exactly the old keys, read back as the defaults.
    old_row = {"to": ["pt"], "out_dir": None, "language": None}
    assert CaptionJobOptions.from_json(old_row) == CaptionJobOptions(to=("pt",))
    assert CaptionJobOptions(to=("pt",)).to_json() == old_row
    assert CaptionJobOptions().skip_silence is True


@pytest.mark.parametrize(
    "row",
    [
        {"formats": ["srt", "doc"]},
        {"formats": "srt"},
        {"max_line_width": 0},
        {"max_line_count": True},
        {"max_line_width": "16"},
        {"task": "summarize"},
        {"whisper": "relative/folder"},
        {"whisper": "base", "model": "mine"},
        {"task": "translate", "model": "mine"},
        {"skip_silence": "yes"},
        {"force": 1},
    ],
)
def test_bad_flag_values_are_refused(row: dict[str, object]) -> None:
    with pytest.raises((JobOptionsError, MediaError)) as refused:
        CaptionJobOptions.from_json(row)
    assert "\n" not in str(refused.value)
