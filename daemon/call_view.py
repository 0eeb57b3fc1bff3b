"""What one side sees of the captions the other side made of its speech (checked, kept, written).

Both ends of a call receive ``Caption`` messages about their own user's speech (a live partial
line in our language, finished lines in both languages); :class:`CallerCaptions` checks them
against the call limits, keeps them for the terminal view and writes them as caption tracks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from media.call_receiver import CallLimits, check_caption
from media.captions import Cue, wrap_lines
from media.subtitles import CaptionTracks, SubtitleError, open_caption_tracks
from schemas.messages import Caption

__all__ = ["CallerCaptions"]


class CallerCaptions:
    """The caller's view of the captions that come back: checked, kept, written to files.

    ``partial`` is the current revisable line in the speaker's language; ``finals`` maps each
    language to its finished lines. ``on_update`` is called after every caption (a live display).
    """

    def __init__(
        self,
        *,
        limits: CallLimits,
        out_base: Path | None = None,
        languages: Sequence[str] = (),
        on_update: Callable[[CallerCaptions], None] | None = None,
    ) -> None:
        self._limits = limits
        self._tracks: CaptionTracks | None = (
            open_caption_tracks(out_base, list(languages)) if out_base is not None else None
        )
        self._languages = list(dict.fromkeys(languages))
        self._on_update = on_update
        self.partial = ""
        self.finals: dict[str, list[Caption]] = {}
        self.all: list[Caption] = []
        self.rejected = 0

    def receive(self, caption: Caption) -> None:
        """Take one caption from the listener; a malformed one raises :class:`CallLimitError`."""
        check_caption(caption, self._limits)
        self.all.append(caption)
        if not caption.final:
            self.partial = caption.text
        else:
            self.finals.setdefault(caption.language, []).append(caption)
            if caption.language == (self._languages[0] if self._languages else None):
                self.partial = ""
            self._write(caption)
        if self._on_update is not None:
            self._on_update(self)

    def _write(self, caption: Caption) -> None:
        if self._tracks is None or caption.language not in self._languages:
            return
        tokens = [t[i : i + 42] for t in caption.text.split() for i in range(0, len(t), 42)]
        if not tokens:
            return
        cue = Cue(
            index=len(self.finals[caption.language]),
            start_s=caption.start_s,
            end_s=caption.end_s,
            lines=tuple(wrap_lines(tokens, 42)),
            words=caption.words,
        )
        try:
            self._tracks.write_cue(caption.language, cue)
        except SubtitleError:
            self.rejected += 1  # out of order or overlapping: keep the rest of the track

    @property
    def paths(self) -> list[Path]:
        return self._tracks.paths if self._tracks is not None else []

    def close(self) -> None:
        if self._tracks is not None:
            self._tracks.close()
