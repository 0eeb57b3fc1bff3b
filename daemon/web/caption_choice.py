"""What a "caption again" request from the web page may choose, checked before it reaches the queue.

The page offers a subset of ``parley caption``'s flags: the languages to translate into, a Whisper
model (a folder's name under ``<home>/models/whisper/``, or one of the ``models.whisper`` names),
the task (transcribe, or Whisper's own translation into English), the spoken language (``None``:
identify it) and whether silence is skipped. Output formats, line layout and folders are the
node's business for a web recording (its tracks live in the job's folder), so they are not
offered. A Whisper *folder path* is not accepted from the web: a browser names models, it does not
point the node at its file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from daemon.jobs import TASKS, WHISPER_NAMES
from daemon.web.recordings import RecordingError, parse_languages

__all__ = ["FIELDS", "RegenerateChoice", "parse_regenerate_choice"]

FIELDS: Final = ("languages", "model", "whisper", "task", "language", "skip_silence")


@dataclass(frozen=True, slots=True)
class RegenerateChoice:
    """A checked request; ``None`` fields keep the recording's (or the node's) setting."""

    languages: tuple[str, ...] | None = None
    model: str | None = None
    whisper: str | None = None
    task: str | None = None
    language: str | None = None
    skip_silence: bool | None = None

    def job_options(self) -> dict[str, object]:
        """The ``caption.submit`` parameters this choice adds (languages and model aside)."""
        options: dict[str, object] = {}
        if self.whisper is not None:
            options["whisper"] = self.whisper
        if self.task is not None:
            options["task"] = self.task
        if self.language is not None:
            options["language"] = self.language
        if self.skip_silence is not None:
            options["skip_silence"] = self.skip_silence
        return options


def parse_regenerate_choice(document: object) -> RegenerateChoice:
    """The choice in a decoded JSON body; :class:`RecordingError` naming the first bad field."""
    if not isinstance(document, dict):
        raise RecordingError("the body must be a JSON object")
    unknown = set(document) - set(FIELDS)
    if unknown:
        raise RecordingError(f"unknown fields: {sorted(unknown)} (known: {', '.join(FIELDS)})")
    languages: tuple[str, ...] | None = None
    if "languages" in document:
        chosen = document["languages"]
        if not isinstance(chosen, list) or not all(isinstance(tag, str) for tag in chosen):
            raise RecordingError("languages must be a list of language tags")
        languages = parse_languages(chosen)
    model = _optional_string(document, "model", "the name of a Whisper model folder")
    whisper = _optional_string(document, "whisper", f"one of {', '.join(WHISPER_NAMES)}")
    if whisper is not None and whisper not in WHISPER_NAMES:
        raise RecordingError(f"whisper must be one of {', '.join(WHISPER_NAMES)}")
    if whisper is not None and model is not None:
        raise RecordingError("name either a model or a whisper setting, not both")
    task = _optional_string(document, "task", f"one of {', '.join(TASKS)}")
    if task is not None and task not in TASKS:
        raise RecordingError(f"task must be one of {', '.join(TASKS)}")
    if task == "translate" and model is not None:
        raise RecordingError("a named model transcribes only; choose whisper to translate")
    language = _optional_string(document, "language", "a language tag, or null to identify it")
    if language is not None:
        tags = parse_languages([language])
        if len(tags) > 1:
            raise RecordingError("language must be one language tag, or null to identify it")
        language = tags[0] if tags else None
    skip = document.get("skip_silence")
    if skip is not None and not isinstance(skip, bool):
        raise RecordingError("skip_silence must be true or false")
    return RegenerateChoice(
        languages=languages,
        model=model,
        whisper=whisper,
        task=task,
        language=language,
        skip_silence=skip,
    )


def _optional_string(document: dict[str, object], name: str, what: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise RecordingError(f"{name} must be {what}")
    return value
