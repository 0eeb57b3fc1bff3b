"""The live call view: the registry's caption lines polled with ``since`` and the terminal view
that shows both sides' captions (partials that settle into finished lines)."""

from __future__ import annotations

import time

from rich.console import Console

from daemon.call_cli import LiveView
from daemon.call_registry import LiveCall, LiveCalls
from media.call_protocol import CallProtocol, CallRole
from schemas.messages import Caption, VoiceTraits

VOICE = VoiceTraits(median_pitch_hz=120.0, speaking_rate_wps=2.5)


def _caption(text: str, language: str, *, final: bool) -> Caption:
    return Caption(
        seq=0, start_s=0.0, end_s=1.0, text=text, language=language, final=final, words=(),
        voice=VOICE,
    )  # fmt: skip


def _call() -> LiveCall:
    return LiveCall(
        call_id=7,
        peer="ana",
        role=CallRole.CALLER,
        protocol=CallProtocol(role=CallRole.CALLER, clock=time.monotonic),
        our_language="en",
        their_language="pt",
    )


def test_polling_with_since_returns_each_caption_once() -> None:
    call = _call()
    call.add_captions("ours", [_caption("hello", "en", final=False)])
    first = call.as_dict()
    assert [c["text"] for c in first["captions"]] == ["hello"]  # type: ignore[index]
    since = first["captions"][-1]["index"]  # type: ignore[index]
    call.add_captions("theirs", [_caption("bom dia", "pt", final=True)])
    second = call.as_dict(since=since)  # type: ignore[arg-type]
    assert [(c["side"], c["text"]) for c in second["captions"]] == [("theirs", "bom dia")]  # type: ignore[index]
    calls = LiveCalls()
    calls.add(call)
    assert calls.get(7) is call and calls.calls() == [call] and calls.ringing() == []


def test_the_view_shows_both_sides_and_a_partial_settles_into_its_line() -> None:
    call = _call()
    view = LiveView()
    call.add_captions("ours", [_caption("hello the", "en", final=False)])
    call.add_captions("theirs", [_caption("bom", "pt", final=False)])
    view.update(call.as_dict(since=view.since))
    assert view.partial == {"ours": "hello the", "theirs": "bom"}
    call.add_captions("ours", [_caption("Hello there.", "en", final=True)])
    call.add_captions("ours", [_caption("Olá.", "pt", final=True)])
    call.add_captions("theirs", [_caption("Bom dia.", "pt", final=True)])
    call.input_level_db = -23.5
    view.update(call.as_dict(since=view.since))
    # Our finished English line replaces our partial; theirs settles when Portuguese is final.
    assert view.partial == {"ours": "", "theirs": ""}
    assert view.finals == [
        ("ours", "en", "Hello there."),
        ("ours", "pt", "Olá."),
        ("theirs", "pt", "Bom dia."),
    ]
    console = Console(width=100, record=True)
    console.print(view.render())
    text = console.export_text()
    assert "[you en] Hello there." in text and "[them pt] Bom dia." in text
    assert "-23.5 dBFS" in text and "with ana" in text
