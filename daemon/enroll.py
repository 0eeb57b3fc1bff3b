"""Enrollment: turn the user's recordings into a personal codec checkpoint.

Order matters for crash safety and for "a bad file changes nothing":

1. decode every file and compute its log-mel features in memory (a missing, corrupt, silent or
   too-short recording raises :class:`EnrollmentError` naming it, before any write);
2. read the existing checkpoint and feature store (again, errors before any write);
3. store the new features as ``.npy`` files (atomic, named by their content hash, so enrolling the
   same recording twice stores it once) under ``features_dir``, where later FL rounds find them;
4. train on all stored features, starting from the checkpoint if there is one;
5. save the checkpoint atomically.

A crash between 3 and 5 leaves extra feature files and the previous checkpoint: both loadable,
and the next enrollment or FL round trains on them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from codec.config import MEL_FRAME_RATE_HZ, CodecConfig
from codec.errors import CheckpointError
from codec.model import new_model, state_to_numpy
from common.atomic import write_atomic
from daemon.errors import DaemonError
from fl.config import TrainConfig
from fl.train import ProgressCallback, StopCallback, TrainReport, evaluate_l1, train_codec
from media.audio import load_audio
from media.errors import MediaError
from media.features import log_mel

#: Shorter recordings hold too little speech to learn from, and are usually a mistake.
MIN_RECORDING_SECONDS: Final = 0.5
FEATURE_SUFFIX: Final = ".npy"
#: A feature file larger than this (≈ 3 h of mel frames) is not one we wrote.
MAX_FEATURE_FILE_BYTES: Final = 400 * 1024 * 1024


class EnrollmentError(DaemonError):
    """A recording given to :func:`enroll` cannot be used (the message names the file)."""


@dataclass(frozen=True, slots=True)
class EnrollReport:
    recordings: tuple[Path, ...]
    stored_feature_files: tuple[Path, ...]
    total_frames: int
    resumed_from_checkpoint: bool
    l1_before: float
    l1_after: float
    train: TrainReport
    checkpoint_path: Path


def _recording_features(path: Path, n_mels: int) -> npt.NDArray[np.float32]:
    try:
        features = log_mel(load_audio(path))
    except MediaError as error:
        # media errors already name the file in one line; keep that text.
        raise EnrollmentError(str(error)) from error
    if features.shape[0] != n_mels:
        raise EnrollmentError(
            f"{str(path)!r}: features have {features.shape[0]} mel bins, the codec needs {n_mels}"
        )
    if features.shape[1] < MIN_RECORDING_SECONDS * MEL_FRAME_RATE_HZ:
        raise EnrollmentError(
            f"recording {str(path)!r} is shorter than {MIN_RECORDING_SECONDS} s of audio"
        )
    return np.ascontiguousarray(features, dtype=np.float32)


def feature_file_name(features: npt.NDArray[np.float32]) -> str:
    digest = hashlib.blake2s(features.tobytes(), digest_size=16)
    digest.update(repr(features.shape).encode())
    return digest.hexdigest() + FEATURE_SUFFIX


def load_feature_file(path: Path, n_mels: int) -> npt.NDArray[np.float32]:
    """One stored feature file, validated; raises :class:`EnrollmentError` naming it."""
    try:
        if path.stat().st_size > MAX_FEATURE_FILE_BYTES:
            raise ValueError("file is too large")
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise EnrollmentError(f"stored features {str(path)!r} are unreadable: {error}") from error
    if (
        not isinstance(array, np.ndarray)
        or array.dtype != np.float32
        or array.ndim != 2
        or array.shape[0] != n_mels
        or array.shape[1] == 0
        or not np.isfinite(array).all()
    ):
        raise EnrollmentError(f"stored features {str(path)!r} are not a finite ({n_mels}, T) array")
    return array


def load_features(features_dir: Path, n_mels: int = 80) -> list[npt.NDArray[np.float32]]:
    """Every stored feature array in ``features_dir`` (sorted by file name), for retraining."""
    if not features_dir.is_dir():
        return []
    return [
        load_feature_file(path, n_mels)
        for path in sorted(features_dir.glob(f"*{FEATURE_SUFFIX}"))
        if not path.name.startswith(".")
    ]


def store_features(features_dir: Path, features: npt.NDArray[np.float32]) -> Path:
    """Write ``features`` atomically under its content name; an identical file is kept as is."""
    features_dir.mkdir(parents=True, exist_ok=True)
    path = features_dir / feature_file_name(features)
    if not path.exists():
        buffer = io.BytesIO()
        np.save(buffer, features, allow_pickle=False)
        write_atomic(path, buffer.getvalue())
    return path


def enroll(
    files: Sequence[Path],
    *,
    checkpoint_path: Path,
    features_dir: Path,
    codec_config: CodecConfig,
    train_config: TrainConfig,
    progress: ProgressCallback | None = None,
    stop: StopCallback | None = None,
) -> EnrollReport:
    """Add ``files`` to the user's voice data and (re)train the personal codec on all of it."""
    if not files:
        raise EnrollmentError("no recordings given")
    recordings = tuple(Path(file) for file in files)
    new_features = [_recording_features(path, codec_config.n_mels) for path in recordings]

    previous: Checkpoint | None = None
    if checkpoint_path.exists():
        previous = load_checkpoint(checkpoint_path)
        if previous.codec_config.architecture_id != codec_config.architecture_id:
            raise CheckpointError(
                f"checkpoint {str(checkpoint_path)!r} is for codec "
                f"{previous.codec_config.architecture_id}, not {codec_config.architecture_id}"
            )
    stored = load_features(features_dir, codec_config.n_mels)

    stored_paths = tuple(store_features(features_dir, features) for features in new_features)
    by_name = {feature_file_name(features): features for features in stored}
    for features in new_features:
        by_name.setdefault(feature_file_name(features), features)
    everything = [by_name[name] for name in sorted(by_name)]

    model = new_model(codec_config, previous.state if previous is not None else None)
    l1_before = evaluate_l1(model, everything)
    report = train_codec(model, everything, train_config, progress=progress, stop=stop)
    l1_after = evaluate_l1(model, everything)
    total_frames = sum(features.shape[1] for features in everything)
    save_checkpoint(
        checkpoint_path,
        Checkpoint(
            codec_config=codec_config,
            state=state_to_numpy(model),
            round=previous.round if previous is not None else 0,
            sample_count=total_frames,
            metadata={
                "source": "enroll",
                "recordings": len(everything),
                "l1": l1_after,
                "steps": report.steps_run,
            },
        ),
    )
    return EnrollReport(
        recordings=recordings,
        stored_feature_files=stored_paths,
        total_frames=total_frames,
        resumed_from_checkpoint=previous is not None,
        l1_before=l1_before,
        l1_after=l1_after,
        train=report,
        checkpoint_path=checkpoint_path,
    )
