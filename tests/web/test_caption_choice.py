"""The web page's "caption again" body: each choice `parley caption` has and the page offers is
accepted and becomes the job's parameter; each bad one is refused with its field named."""

from __future__ import annotations

import json

import pytest

from daemon.jobs import CaptionJobOptions
from daemon.web.caption_choice import FIELDS, RegenerateChoice, parse_regenerate_choice
from daemon.web.openapi import openapi_document
from daemon.web.recordings import Recording, RecordingError


def test_every_choice_becomes_a_caption_job_parameter_the_queue_accepts() -> None:
    body = json.loads(
        '{"languages": ["pt", "es"], "whisper": "base", "task": "translate",'
        ' "language": "pt", "skip_silence": false}'
    )
    choice = parse_regenerate_choice(body)
    assert choice.languages == ("pt", "es")
    assert choice.job_options() == {
        "whisper": "base",
        "task": "translate",
        "language": "pt",
        "skip_silence": False,
    }
    # The same names and values the node's own job options take (the queue's check).
    options = CaptionJobOptions(to=choice.languages or (), **choice.job_options())  # type: ignore[arg-type]
    assert (options.whisper, options.task, options.language, options.skip_silence) == (
        "base",
        "translate",
        "pt",
        False,
    )


def test_an_empty_body_or_null_language_keeps_the_defaults() -> None:
    assert parse_regenerate_choice({}) == RegenerateChoice()
    assert parse_regenerate_choice({"language": None}).job_options() == {}
    assert parse_regenerate_choice({"language": ""}).language is None


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"whisper": "/etc"}, "whisper must be one of"),
        ({"whisper": "large-v3"}, "whisper must be one of"),
        ({"task": "dance"}, "task must be one of"),
        ({"skip_silence": "no"}, "skip_silence must be true or false"),
        ({"language": 7}, "language must be"),
        ({"language": "en,pt"}, "language must be one language tag"),
        ({"language": "klingon!"}, "is not a language tag"),
        ({"model": "tiny-again", "whisper": "base"}, "not both"),
        ({"model": "tiny-again", "task": "translate"}, "transcribes only"),
        ({"formats": ["srt"]}, "unknown fields: ['formats']"),
        (["pt"], "must be a JSON object"),
    ],
)
def test_a_bad_choice_is_refused_naming_it(body: object, named: str) -> None:
    with pytest.raises(RecordingError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_regenerate_choice(body)


def test_the_openapi_document_describes_what_the_api_takes_and_shows() -> None:
    document = openapi_document()
    path = "/api/recordings/{recording_id}/captions/regenerate"
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == set(FIELDS)
    shown = document["components"]["schemas"]["Recording"]["properties"]
    fields = Recording.__dataclass_fields__
    empty = {name: () if name.endswith("languages") else None for name in fields}
    sample = Recording(**empty).as_json()  # type: ignore[arg-type]
    assert set(shown) == set(sample)
