"""Apertium (rule-based machine translation) as a translation backend, through its programs.

Apertium's language data are Debian packages (``apertium-eng-spa``, ``apertium-es-pt``); the
translation itself is a pipeline of programs that the ``apertium`` wrapper script (from the
``apertium`` package, which needs ``gawk``) assembles from a *mode* file and wraps in
``apertium-destxt``/``apertium-retxt`` so plain text survives. We run that wrapper on stdin, in
a worker thread (callers already call translators off the event loop), with a timeout.

Several texts go through one run: each on its own line. ``apertium-destxt`` turns a newline into
a "superblank" that every stage passes through untouched, so line *i* of the output is the
translation of line *i* of the input. Should the count ever differ, the texts are translated
one run each instead of being misaligned.

The modes used (``apertium -l`` lists what is installed): ``eng-spa`` and ``spa-eng`` from
apertium-eng-spa; ``es-pt_BR`` (Brazilian spelling, like the Bergamot models) and ``pt-es`` from
apertium-es-pt.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import Final

from media.errors import ModelNotFoundError

__all__ = [
    "APERTIUM_MODES",
    "ApertiumTranslator",
    "apertium_directions",
]

#: (source, target) -> (apertium mode, Debian package with its data).
APERTIUM_MODES: Final[dict[tuple[str, str], tuple[str, str]]] = {
    ("en", "es"): ("eng-spa", "apertium-eng-spa"),
    ("es", "en"): ("spa-eng", "apertium-eng-spa"),
    ("es", "pt"): ("es-pt_BR", "apertium-es-pt"),
    ("pt", "es"): ("pt-es", "apertium-es-pt"),
}
_TIMEOUT_S: Final = 60.0


def _apertium_binary() -> str | None:
    return shutil.which("apertium")


def apertium_directions() -> dict[tuple[str, str], str]:
    """The directions whose mode is installed here: (source, target) -> mode name."""
    if _apertium_binary() is None or shutil.which("gawk") is None:
        return {}
    try:
        result = subprocess.run(
            ["apertium", "-l"], capture_output=True, check=False, timeout=_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    listed = set(result.stdout.decode("utf-8", "replace").split())
    return {pair: mode for pair, (mode, _package) in APERTIUM_MODES.items() if mode in listed}


class ApertiumTranslator:
    """One Apertium direction; construction checks that its mode is installed."""

    def __init__(self, source: str, target: str) -> None:
        from media.errors import UnsupportedLanguagePairError

        entry = APERTIUM_MODES.get((source, target))
        if entry is None:
            raise UnsupportedLanguagePairError(
                f"Apertium has no {source}→{target} data here (it serves "
                f"{', '.join(f'{s}→{t}' for s, t in APERTIUM_MODES)})"
            )
        mode, package = entry
        binary = _apertium_binary()
        if binary is None or shutil.which("gawk") is None:
            raise ModelNotFoundError(
                "Apertium is not installed (Debian packages apertium and gawk: "
                f"apt-get install apertium gawk {package})"
            )
        if mode not in apertium_directions().values():
            raise ModelNotFoundError(
                f"Apertium's {source}→{target} data are not installed (Debian package {package})"
            )
        self._binary = binary
        self._source, self._target, self._mode = source, target, mode

    @property
    def source(self) -> str:
        return self._source

    @property
    def target(self) -> str:
        return self._target

    @property
    def mode(self) -> str:
        return self._mode

    def translate(self, texts: Sequence[str]) -> list[str]:
        cleaned = [" ".join(text.split()) for text in texts]
        wanted = [text for text in cleaned if text]
        if not wanted:
            return ["" for _ in cleaned]
        lines = self._run("\n".join(wanted)).split("\n")
        if len(lines) != len(wanted):
            lines = [self._run(text) for text in wanted]
        results = iter(" ".join(line.split()) for line in lines)
        return [next(results) if text else "" for text in cleaned]

    def _run(self, text: str) -> str:
        from media.errors import TranslationError

        try:
            result = subprocess.run(
                [self._binary, "-u", "-f", "txt", self._mode],
                input=(text + "\n").encode("utf-8"),
                capture_output=True,
                check=True,
                timeout=_TIMEOUT_S,
            )
        except subprocess.CalledProcessError as error:
            detail = " ".join(error.stderr.decode("utf-8", "replace").split())[:200]
            raise TranslationError(
                f"Apertium {self._mode} failed on {text[:40]!r}: {detail or 'no message'}"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise TranslationError(
                f"Apertium {self._mode} took over {_TIMEOUT_S:.0f} s on {text[:40]!r}"
            ) from error
        except OSError as error:
            raise TranslationError(f"cannot run Apertium: {error}") from error
        return result.stdout.decode("utf-8", "replace").rstrip("\n")
