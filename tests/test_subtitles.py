"""SRT/WebVTT writers, checked by two independent parsers (``srt`` and ``webvtt-py``)."""

from __future__ import annotations

import html
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import srt
import webvtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.captions import Cue, segment_words
from media.errors import MediaError
from media.subtitles import (
    LiveSubtitleWriter,
    SubtitleError,
    SubtitleFormat,
    format_timestamp,
    open_caption_tracks,
    render_document,
    track_path,
)
from schemas.messages import WordTime

# Any printable text, including the markup and arrow that the formats treat specially.
_word_text = st.one_of(
    st.sampled_from(["-->", "&", "<b>", "a<b", "&amp;", "1", "é", "日本", "x>y", "--"]),
    st.text(
        alphabet=st.characters(categories=["L", "N", "P", "S"], max_codepoint=0x2FFF),
        min_size=1,
        max_size=12,
    ),
)


@st.composite
def cue_lists(draw: st.DrawFn) -> list[Cue]:
    words = []
    t = draw(st.floats(min_value=0, max_value=4000))
    for _ in range(draw(st.integers(min_value=0, max_value=25))):
        t += draw(st.floats(min_value=0, max_value=2))
        words.append(WordTime(word=draw(_word_text), start_s=t, end_s=t + draw(st.floats(0, 1.5))))
    return segment_words(words)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _check_srt(text: str, cues: list[Cue]) -> None:
    parsed = list(srt.parse(text))
    assert len(parsed) == len(cues)
    for number, (sub, cue) in enumerate(zip(parsed, cues, strict=True), start=1):
        assert sub.index == number
        assert sub.start.total_seconds() * 1000 == pytest.approx(_ms(cue.start_s))
        assert sub.end.total_seconds() * 1000 == pytest.approx(_ms(cue.end_s))
        assert sub.content == "\n".join(cue.lines)


def _check_vtt(text: str, cues: list[Cue]) -> None:
    parsed = webvtt.from_string(text).captions
    assert len(parsed) == len(cues)
    for caption, cue in zip(parsed, cues, strict=True):
        assert caption.start_time.in_milliseconds() == _ms(cue.start_s)
        assert caption.end_time.in_milliseconds() == _ms(cue.end_s)
        assert [html.unescape(line) for line in caption.lines] == list(cue.lines)


@settings(max_examples=60, deadline=None)
@given(cue_lists())
def test_documents_parse_back_with_independent_parsers(cues: list[Cue]) -> None:
    _check_srt(render_document(cues, SubtitleFormat.SRT), cues)
    _check_vtt(render_document(cues, SubtitleFormat.WEBVTT), cues)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cue_lists())
def test_live_writer_file_is_parseable_after_every_cue(tmp_path: Path, cues: list[Cue]) -> None:
    for subtitle_format, check in (
        (SubtitleFormat.SRT, _check_srt),
        (SubtitleFormat.WEBVTT, _check_vtt),
    ):
        path = tmp_path / f"call.{subtitle_format.value}"
        with LiveSubtitleWriter(path, subtitle_format) as writer:
            check(path.read_text(encoding="utf-8"), [])
            for count, cue in enumerate(cues, start=1):
                writer.write_cue(cue)
                check(path.read_text(encoding="utf-8"), cues[:count])


def test_killed_writer_leaves_a_parseable_file(tmp_path: Path) -> None:
    # A child process writes three cues and is killed with SIGKILL before it can close anything.
    path = tmp_path / "call.en.vtt"
    script = textwrap.dedent(
        f"""
        import os, signal
        from media.captions import Cue
        from media.subtitles import LiveSubtitleWriter, SubtitleFormat
        writer = LiveSubtitleWriter({str(path)!r}, SubtitleFormat.WEBVTT)
        for i in range(3):
            writer.write_cue(Cue(index=i + 1, start_s=i * 2.0, end_s=i * 2.0 + 1.5,
                                 lines=(f"cue number {{i}}",)))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        check=False,
        capture_output=True,
    )
    assert result.returncode == -9
    captions = webvtt.from_string(path.read_text(encoding="utf-8")).captions
    assert [c.text for c in captions] == ["cue number 0", "cue number 1", "cue number 2"]


def test_translated_tracks_are_written_alongside(tmp_path: Path) -> None:
    cue_en = Cue(index=1, start_s=0.5, end_s=2.0, lines=("The children played in the park.",))
    cue_pt = Cue(index=1, start_s=0.5, end_s=2.0, lines=("As crianças brincavam no parque.",))
    with open_caption_tracks(tmp_path / "call", ["en", "pt"]) as tracks:
        tracks.write_cue("en", cue_en)
        tracks.write_cue("pt", cue_pt)
        with pytest.raises(SubtitleError, match="'de'"):
            tracks.write_cue("de", cue_en)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "call.en.srt",
        "call.en.vtt",
        "call.pt.srt",
        "call.pt.vtt",
    ]
    _check_vtt((tmp_path / "call.pt.vtt").read_text(encoding="utf-8"), [cue_pt])
    _check_srt((tmp_path / "call.en.srt").read_text(encoding="utf-8"), [cue_en])


def test_timestamps_match_the_format_specs() -> None:
    # Examples from the SubRip convention and the WebVTT spec (§4.1).
    assert format_timestamp(3723.004, SubtitleFormat.SRT) == "01:02:03,004"
    assert format_timestamp(3723.004, SubtitleFormat.WEBVTT) == "01:02:03.004"
    assert format_timestamp(0.0005, SubtitleFormat.WEBVTT) == "00:00:00.000"
    with pytest.raises(SubtitleError, match="timestamp"):
        format_timestamp(float("inf"), SubtitleFormat.SRT)


def test_writer_refuses_bad_input_with_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SubtitleError, match="language tag"):
        track_path(tmp_path / "call", "../../etc", SubtitleFormat.WEBVTT)
    with pytest.raises(SubtitleError, match="cannot open") as info:
        LiveSubtitleWriter(tmp_path / "missing-dir" / "x.vtt", SubtitleFormat.WEBVTT)
    assert isinstance(info.value, MediaError)
    with LiveSubtitleWriter(tmp_path / "x.srt", SubtitleFormat.SRT) as writer:
        writer.write_cue(Cue(index=1, start_s=1.0, end_s=3.0, lines=("a",)))
        with pytest.raises(SubtitleError, match="before the previous cue ends"):
            writer.write_cue(Cue(index=2, start_s=2.0, end_s=4.0, lines=("b",)))
        with pytest.raises(SubtitleError, match="no text"):
            writer.write_cue(Cue(index=2, start_s=5.0, end_s=6.0, lines=("  ",)))
    with pytest.raises(SubtitleError, match="closed"):
        writer.write_cue(Cue(index=3, start_s=7.0, end_s=8.0, lines=("c",)))
