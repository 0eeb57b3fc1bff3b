"""Captions for a recording: audio or video file in, SRT + WebVTT tracks out (``parley caption``).

Theory of operation
-------------------
1. *Decode*: ``load_audio`` turns any container PyAV reads (WAV, FLAC, MP3, the audio stream of a
   video) into 16 kHz mono float32, or raises a one-line ``AudioFileError``/``SilentAudioError``.
2. *Features*: one ``log_mel`` over the whole recording, so the ``max - 8`` clamp is the same for
   every part, exactly as ``WhisperModel.transcribe`` computes it.
3. *Transcribe span by span*: with ``skip_silence`` (the default) the Silero VAD's speech groups
   (silences of 2 s and more left out, groups joined while they fit one window), else the whole
   recording, each handed to the decoder whole. Inside a span, faster-whisper's own loop
   windows it as ``WhisperModel.transcribe`` does: every window is 30 s of real audio except
   the span's last, and the next window starts at the last complete word. (Cutting long spans
   into slices of at most 30 s in VAD pauses, each zero-padded to a window, was tried in
   session 4: on the tuning set it lost whole sentences, e.g. the first sentence of a 26 s
   slice, and was less accurate than ``transcribe`` on the same features.) Word times are
   shifted by the span's start; a word faster-whisper's timing split ("d" + "'orteit") is
   joined again. Progress is reported per span.
4. *Cues*: the timed words go through ``segment_words`` (line, duration and overlap rules of
   docs/design.md, "Captions and languages").
5. *Translate*: for each target language, the cue texts are translated one per cue and put on the
   source cues' timing with ``retime_text``, so every track shows the same moments.
6. *Write*: every document is rendered in memory first; only then is ``out_dir`` created and each
   file written through a temp file + fsync + rename. A bad input therefore writes nothing, and a
   crash mid-write leaves whole files only (a failed write removes what this call wrote).

Files are named after the input's stem with ``track_path``: ``talk.mp4`` gives ``talk.en.srt``,
``talk.en.vtt``, ``talk.pt.srt``, ``talk.pt.vtt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from common.atomic import write_atomic
from media.audio import load_audio
from media.caption_formats import (
    OutputFormat,
    TimedSegment,
    TimedWord,
    render_highlighted_vtt,
    render_json,
    render_tsv,
    render_txt,
)
from media.captions import CaptionLayout, Cue, retime_text, segment_words
from media.errors import MediaError
from media.features import FRAMES_PER_SECOND, FloatArray, log_mel
from media.speech_spans import find_speech, group_spans
from media.subtitles import SubtitleError, SubtitleFormat, render_document, track_path
from media.translate import Translator, language_key
from schemas.messages import WordTime

if TYPE_CHECKING:
    from media.asr import LanguageGuess, Transcript

__all__ = [
    "CaptionFileError",
    "CaptionResult",
    "FeatureDecoder",
    "OutputExistsError",
    "Progress",
    "SpeechRecognizer",
    "TranslatorFactory",
    "caption_recording",
    "transcribe_words",
]

#: Whisper's window: a slice of at most this much audio is decoded as one window.
WHISPER_WINDOW_S: Final = 30.0
#: Scripts Whisper writes without spaces: its words there are characters, never to be joined.
_UNSPACED_LANGUAGES: Final = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
#: Share of the overall progress each stage accounts for (transcription dominates).
_PROGRESS_DECODED: Final = 0.05
_PROGRESS_TRANSCRIBED: Final = 0.85
_PROGRESS_TRANSLATED: Final = 0.95
_DEFAULT_FORMATS: Final = (OutputFormat.SRT, OutputFormat.VTT)

#: ``progress(stage, fraction)``: ``stage`` is one of "decode", "transcribe", "translate",
#: "write", "done"; ``fraction`` is the share of the whole job done, non-decreasing in [0, 1].
Progress = Callable[[str, float], None]
#: Builds the translator for ``(source, target)``; raises ``UnsupportedLanguagePairError``.
TranslatorFactory = Callable[[str, str], Translator]


class CaptionFileError(MediaError):
    """The caption request itself is wrong (a bad language tag, an output folder that is a file)."""


class OutputExistsError(CaptionFileError):
    """An output file exists and the caller asked not to replace it; nothing was written."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists")
        self.path = path


class FeatureDecoder(Protocol):
    """What ``caption_recording`` needs of an ASR engine (``media.asr.FeatureTranscriber``)."""

    def transcribe_features(
        self, mel: FloatArray, *, on_progress: Callable[[float], None] | None = None
    ) -> Transcript: ...


class SpeechRecognizer(Protocol):
    """Identification plus per-language decoders (``media.recognizer.WhisperRecognizer``)."""

    def identify_language(self, mel: FloatArray) -> LanguageGuess: ...

    def for_language(self, language: str) -> FeatureDecoder: ...


@dataclass(frozen=True, slots=True)
class CaptionResult:
    """What was written: ``outputs`` maps ``"<lang>.<ext>"`` (e.g. ``"pt.vtt"``) to the file.

    ``tracks`` holds the cues of every language (the source's with their word times), for a
    caller that keeps more than the subtitle files (the web page's transcript).
    """

    outputs: Mapping[str, Path]
    language: str
    cue_count: int
    duration_s: float
    tracks: Mapping[str, Sequence[Cue]] = field(default_factory=dict)
    #: Whisper's probability for ``language`` when it was identified; ``None`` when forced.
    language_probability: float | None = None


def caption_recording(
    path: str | os.PathLike[str],
    *,
    out_dir: Path,
    transcriber: FeatureDecoder | None = None,
    translator_factory: TranslatorFactory,
    to_languages: Sequence[str] = (),
    source_language: str = "en",
    recognizer: SpeechRecognizer | None = None,
    language: str | None = None,
    layout: CaptionLayout | None = None,
    progress: Progress | None = None,
    window_s: float = WHISPER_WINDOW_S,
    file_mode: int = 0o644,
    overwrite: bool = True,
    formats: Sequence[OutputFormat] = _DEFAULT_FORMATS,
    highlight_words: bool = False,
    translated_by_whisper: bool = False,
    skip_silence: bool = True,
) -> CaptionResult:
    """Caption the recording at ``path`` into ``out_dir`` (see the module docstring).

    ``to_languages`` are translation targets; the source language (the transcript's) is always
    written, and a target equal to it is not written twice. Translators are built before any
    decoding for ``source_language`` (what the transcriber is expected to produce), so an
    unsupported pair fails in a moment, not after the whole recording was transcribed; should
    the transcript come out in another language (a multilingual model detecting it), they are
    built again for that one.

    With a ``recognizer`` instead of a ``transcriber``, the spoken language is ``language`` when
    given, else identified on the recording (``CaptionResult.language_probability`` says how
    sure), and the decoder for that language transcribes it; translators are then built right
    after decoding the audio, before the transcription.

    Raises a ``MediaError``: the input's ``AudioFileError``/``SilentAudioError``, the translator
    factory's ``UnsupportedLanguagePairError``, ``SubtitleError`` when a file cannot be written.
    ``formats`` are the files written per language (``media.caption_formats``); with
    ``highlight_words`` the spoken language's WebVTT underlines each word while it is spoken.
    ``translated_by_whisper``: the decoders run Whisper's translate task, so the text is English
    whatever was spoken; the track is then ``en`` (``CaptionResult.language`` stays the spoken
    language) and ``to_languages`` translate from English.
    ``skip_silence`` (the default): silences of 2 s and more the Silero VAD finds are not decoded
    (``media.speech_spans``); a recording where it finds no speech at all is decoded whole.
    With ``overwrite=False`` an existing output file raises :class:`OutputExistsError` before
    anything is written (none of the recording's files is written then).
    Nothing is left in ``out_dir`` when it raises.
    """
    if not (math.isfinite(window_s) and 1.0 <= window_s <= WHISPER_WINDOW_S):
        raise ValueError(f"window_s must be in [1, {WHISPER_WINDOW_S}], got {window_s}")
    report: Progress = progress if progress is not None else _no_progress
    source_path = Path(path)
    layout = layout if layout is not None else CaptionLayout()
    targets = _unique_languages(to_languages)
    if out_dir.exists() and not out_dir.is_dir():
        raise CaptionFileError(f"output folder {str(out_dir)!r} exists and is not a folder")

    if (transcriber is None) == (recognizer is None):
        raise ValueError("pass exactly one of transcriber and recognizer")
    probability: float | None = None

    def text_language(spoken: str) -> str:
        return "en" if translated_by_whisper else spoken

    if recognizer is None:
        translators = _build_translators(
            translator_factory, text_language(source_language), targets
        )
    elif language is not None:
        source_language = _unique_languages([language])[0]
        translators = _build_translators(
            translator_factory, text_language(source_language), targets
        )
        transcriber = recognizer.for_language(source_language)

    report("decode", 0.0)
    audio = load_audio(source_path)
    mel = log_mel(audio)
    report("decode", _PROGRESS_DECODED)
    if recognizer is not None and language is None:
        guess = recognizer.identify_language(mel)
        source_language, probability = guess.language, guess.probability
        translators = _build_translators(
            translator_factory, text_language(source_language), targets
        )
        transcriber = recognizer.for_language(source_language)
    if transcriber is None:  # a forced language built it above
        raise ValueError("no transcriber")  # unreachable: one of the branches set it

    window_frames = round(window_s * FRAMES_PER_SECOND)
    speech = find_speech(audio) if skip_silence else None
    spans = (
        group_spans(speech.speech_groups(), window_frames=window_frames)
        if speech is not None
        else None
    )
    if not spans:
        # Nothing the VAD calls speech (music, a whisper, noise): decode it all rather than
        # hand back no captions on the VAD's word alone.
        spans = None
    transcript_language, words, segments = _transcribe(
        mel,
        transcriber,
        spans=spans,
        fallback_language=source_language,
        progress=report,
    )
    duration_s = (mel.shape[1] - 1) / FRAMES_PER_SECOND
    source_cues = segment_words(words, layout=layout)

    track_language = text_language(transcript_language)
    if language_key(track_language) != language_key(text_language(source_language)):
        translators = _build_translators(translator_factory, track_language, targets)
    tracks: dict[str, list[Cue]] = {track_language: source_cues}
    wanted = list(translators)
    for number, target in enumerate(wanted):
        translator = translators[target]
        texts = translator.translate([cue.text for cue in source_cues]) if source_cues else []
        tracks[target] = retime_text(source_cues, texts, layout=layout)
        step = (_PROGRESS_TRANSLATED - _PROGRESS_TRANSCRIBED) * (number + 1) / len(wanted)
        report("translate", _PROGRESS_TRANSCRIBED + step)

    report("write", _PROGRESS_TRANSLATED)
    documents = _render_tracks(
        tracks,
        base=out_dir / source_path.stem,
        source_language=track_language,
        segments=segments,
        formats=formats,
        highlight_words=highlight_words,
    )
    if not overwrite:
        for document in documents.values():
            if document.path.exists() or document.path.is_symlink():
                raise OutputExistsError(document.path)
    outputs = _write_documents(documents, out_dir, file_mode)
    report("done", 1.0)
    return CaptionResult(
        outputs=outputs,
        language=transcript_language,
        cue_count=len(source_cues),
        duration_s=duration_s,
        tracks=tracks,
        language_probability=probability,
    )


def _no_progress(stage: str, fraction: float) -> None:
    return None


def _build_translators(
    factory: TranslatorFactory, source: str, targets: Sequence[str]
) -> dict[str, Translator]:
    """One translator per target that differs from ``source``, in the order asked."""
    source_key = language_key(source)
    return {
        target: factory(source, target) for target in targets if language_key(target) != source_key
    }


def _unique_languages(languages: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for tag in languages:
        try:
            key = language_key(tag)
            # The tag names a file too: refuse now what track_path would refuse at the end.
            track_path(Path("check"), tag, SubtitleFormat.SRT)
        except MediaError as error:
            raise CaptionFileError(str(error)) from error
        seen.setdefault(key, tag)
    return list(seen.values())


def _transcribe(
    mel: FloatArray,
    transcriber: FeatureDecoder,
    *,
    progress: Progress,
    spans: Sequence[tuple[int, int]] | None = None,
    fallback_language: str = "en",
) -> tuple[str, list[WordTime], list[TimedSegment]]:
    """Decode each of ``spans`` (content frames ``[start, end)``; default: the whole ``mel``)
    whole: the decoder's loop windows a long span itself, as ``WhisperModel.transcribe`` does."""
    content_frames = mel.shape[1] - 1
    if spans is None:
        spans = [(0, content_frames)]
    pieces = [(start, min(end, content_frames)) for start, end in spans]
    words: list[WordTime] = []
    segments: list[TimedSegment] = []
    language = fallback_language
    share = _PROGRESS_TRANSCRIBED - _PROGRESS_DECODED
    for start, end in pieces:
        if end <= start:
            continue
        # One frame past the span: log_mel's layout ends with a frame the decoder drops as
        # padding, so the span keeps exactly its own content frames.
        features = mel[:, start : end + 1]

        def report(seconds: float, start: int = start) -> None:
            # Inside a long span (a talk with no 2 s silence): progress per decoded segment.
            done = (start + seconds * FRAMES_PER_SECOND) / content_frames if content_frames else 1.0
            progress("transcribe", _PROGRESS_DECODED + share * min(done, 1.0))

        transcript = _with_whole_words(
            transcriber.transcribe_features(features, on_progress=report)
        )
        language = transcript.language
        start_s = start / FRAMES_PER_SECOND
        # Nothing is said in the padding: times end with the span.
        end_s = end / FRAMES_PER_SECOND
        shifted = _shifted_words(transcript, start_s, end_s, words)
        segments.extend(_shifted_segments(transcript, shifted, start_s, end_s))
        words.extend(shifted)
        done = (end / content_frames) if content_frames else 1.0
        progress("transcribe", _PROGRESS_DECODED + share * done)
    return language, words, segments


def _with_whole_words(transcript: Transcript) -> Transcript:
    """``transcript`` with each word whole: faster-whisper's word timing moves a prepended
    punctuation mark to the next word, so "d'orteit" arrives as " d" and "'orteit"; a word with
    no leading space continues the one before it (except in scripts written without spaces)."""
    from media.asr import Word  # the decoder's module: loaded by now, heavy to import early

    if transcript.language in _UNSPACED_LANGUAGES:
        return transcript
    segments = []
    for segment in transcript.segments:
        words: list[Word] = []
        for word in segment.words:
            if words and word.word and not word.word[0].isspace():
                previous = words[-1]
                words[-1] = Word(
                    word=previous.word + word.word,
                    start_s=previous.start_s,
                    end_s=max(previous.end_s, word.end_s),
                    probability=previous.probability * word.probability,
                )
            else:
                words.append(word)
        segments.append(dataclasses.replace(segment, words=tuple(words)))
    return dataclasses.replace(transcript, segments=tuple(segments))


def _shifted_segments(
    transcript: Transcript, shifted: Sequence[WordTime], offset_s: float, duration_s: float
) -> list[TimedSegment]:
    """The transcript's segments on the recording's clock, with the already shifted words
    (``shifted`` lines up with ``transcript.words``) and Whisper's word probabilities."""
    segments: list[TimedSegment] = []
    position = 0
    for segment in transcript.segments:
        timed = tuple(
            TimedWord(word=w.word, start_s=w.start_s, end_s=w.end_s, probability=p.probability)
            for w, p in zip(
                shifted[position : position + len(segment.words)], segment.words, strict=True
            )
        )
        position += len(segment.words)
        start = min(segment.start_s + offset_s, duration_s)
        segments.append(
            TimedSegment(
                start_s=start,
                end_s=max(start, min(segment.end_s + offset_s, duration_s)),
                text=segment.text,
                words=timed,
                avg_logprob=segment.avg_logprob,
                no_speech_prob=segment.no_speech_prob,
            )
        )
    return segments


def _shifted_words(
    transcript: Transcript, offset_s: float, duration_s: float, earlier: Sequence[WordTime]
) -> list[WordTime]:
    """Word times on the recording's clock, clamped to it and non-decreasing.

    Whisper's word alignment occasionally puts a word a few milliseconds before its
    predecessor or past the end of the audio; the cue builder rightly refuses such times, so
    they are clamped here rather than failing a whole recording over a rounding artefact.
    """
    previous_start = earlier[-1].start_s if earlier else 0.0
    shifted: list[WordTime] = []
    for word in transcript.words:
        start = min(max(word.start_s + offset_s, previous_start), duration_s)
        end = min(max(word.end_s + offset_s, start), duration_s)
        shifted.append(WordTime(word=word.word, start_s=start, end_s=end))
        previous_start = start
    return shifted


def _render_tracks(
    tracks: Mapping[str, Sequence[Cue]],
    *,
    base: Path,
    source_language: str,
    segments: Sequence[TimedSegment],
    formats: Sequence[OutputFormat],
    highlight_words: bool,
) -> dict[str, _Document]:
    documents: dict[str, _Document] = {}
    for language, cues in tracks.items():
        is_source = language == source_language
        for output_format in formats:
            if output_format is OutputFormat.SRT:
                text = render_document(cues, SubtitleFormat.SRT)
            elif output_format is OutputFormat.VTT:
                highlighted = highlight_words and is_source
                text = (
                    render_highlighted_vtt(cues)
                    if highlighted
                    else render_document(cues, SubtitleFormat.WEBVTT)
                )
            elif output_format is OutputFormat.JSON:
                text = render_json(
                    language,
                    cues,
                    segments if is_source else None,
                    translated_from=None if is_source else source_language,
                )
            elif output_format is OutputFormat.TXT:
                text = render_txt(cues)
            else:
                text = render_tsv(cues)
            path = track_path(base, language, SubtitleFormat.SRT).with_suffix(
                f".{output_format.value}"
            )
            documents[f"{language}.{output_format.value}"] = _Document(path=path, text=text)
    return documents


@dataclass(frozen=True, slots=True)
class _Document:
    path: Path
    text: str


def _write_documents(
    documents: Mapping[str, _Document], out_dir: Path, file_mode: int = 0o644
) -> dict[str, Path]:
    created_dir = not out_dir.exists()
    written: list[Path] = []
    # Private files get private folders too (mkdir's parents=True ignores the mode).
    dir_mode = 0o700 if file_mode & 0o077 == 0 else 0o755
    try:
        for folder in reversed([out_dir, *out_dir.parents]):
            if not folder.exists():
                folder.mkdir(mode=dir_mode)
        for document in documents.values():
            write_atomic(document.path, document.text.encode("utf-8"), mode=file_mode)
            written.append(document.path)
    except OSError as error:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        if created_dir:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        reason = error.strerror or type(error).__name__
        where = error.filename if error.filename is not None else out_dir
        raise SubtitleError(f"cannot write captions to {str(where)!r}: {reason}") from error
    return {key: document.path for key, document in documents.items()}


def transcribe_words(
    audio: FloatArray,
    transcriber: FeatureDecoder,
    *,
    progress: Progress | None = None,
) -> tuple[str, list[WordTime], float]:
    """Language, timed words and duration of 16 kHz ``audio``, transcribed as
    :func:`caption_recording` does it (for callers that need the words, e.g. ``parley dub``).

    ``progress`` gets the "transcribe" stage with fractions in [0.05, 0.85].
    """
    mel = log_mel(audio)
    language, words, _segments = _transcribe(
        mel,
        transcriber,
        progress=progress if progress is not None else _no_progress,
    )
    return language, words, (mel.shape[1] - 1) / FRAMES_PER_SECOND
