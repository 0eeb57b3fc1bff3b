"""Our codec on disk, and the decoders peers gave us.

* Our model is one checkpoint (``models/codec.ckpt``), written atomically; the node reloads it
  at the start of every round, so an enrollment made by ``parley enroll`` while the node runs
  is picked up, and a round that fails midway leaves the file (the previous model) untouched.
* A first start creates the model from the shared seeded init, so every node starts from the
  same weights, as federated averaging assumes, and leaves a marker (``codec.created``) so a
  later start can tell a first start from a deleted checkpoint.
* Damage is recovered from, loudly: a corrupt ``codec.ckpt`` is moved aside
  (``codec.ckpt.corrupt``) and the previous generation (``codec.ckpt.prev``, kept by every
  save) is restored; a deleted one is restored from the previous generation too. Only when no
  generation is usable is the model started again from the shared init (a deleted checkpoint
  without a previous one), or the start refused (a corrupt one: ``parley doctor`` says what
  to do). Each recovery is logged as a warning and listed under ``codec.warnings`` in the
  status.
* Bundles received from trusted peers are kept, one file per peer and codec version
  (``models/peers/<peer id>/<content hash>.bundle``), at most :data:`MAX_DECODERS_PER_PEER` per
  peer, oldest dropped first: the record of which codecs a peer sent us. A call does not read
  them: it decodes with the bundle of its own session's handshake (docs/design.md, "Calls").
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from codec.bundle import bundle_from_state, state_from_bundle
from codec.checkpoint import Checkpoint, load_checkpoint, previous_path, save_checkpoint
from codec.config import CodecConfig
from codec.errors import CheckpointError
from codec.model import expected_shapes, new_model, state_to_numpy
from codec.pretrained import DEFAULT_CHECKPOINT
from common.atomic import write_atomic
from daemon.enroll import FEATURE_SUFFIX, load_features
from daemon.logs import event, get_logger
from daemon.peers import format_peer_id
from schemas.codec import encode
from schemas.messages import WeightsBundle

CHECKPOINT_NAME: Final = "codec.ckpt"
CREATED_MARKER: Final = "codec.created"
CORRUPT_SUFFIX: Final = ".corrupt"
MAX_WARNINGS: Final = 10

log = get_logger("codec")
MAX_DECODERS_PER_PEER: Final = 4
FEATURES_DIGEST_KEY: Final = "features_digest"

State = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class OurCodec:
    """Our current model as loaded from disk, with the bundle we send to peers."""

    checkpoint: Checkpoint
    bundle: WeightsBundle

    @property
    def version_hash(self) -> bytes:
        return self.bundle.content_hash

    @property
    def config(self) -> CodecConfig:
        return self.checkpoint.codec_config


class CodecStore:
    def __init__(self, models_dir: Path, features_dir: Path, default_config: CodecConfig) -> None:
        self._models_dir = models_dir
        self._features_dir = features_dir
        self._default_config = default_config
        self._current: OurCodec | None = None
        self._loaded_mtime: int | None = None
        #: What was recovered from (shown in the status), newest last.
        self.warnings: list[str] = []
        self._reference_norm: float | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self._models_dir / CHECKPOINT_NAME

    @property
    def features_dir(self) -> Path:
        return self._features_dir

    def current(self) -> OurCodec:
        """Our codec, reloaded if the checkpoint changed on disk since the last call."""
        path = self.checkpoint_path
        if not path.exists():
            if previous_path(path).exists() or (self._models_dir / CREATED_MARKER).exists():
                return self._recover(f"{path} is missing")
            self.save(self._starting_point())
            write_atomic(self._models_dir / CREATED_MARKER, b"codec.ckpt created here\n")
        mtime = path.stat().st_mtime_ns
        if self._current is None or mtime != self._loaded_mtime:
            try:
                checkpoint = load_checkpoint(path)
            except CheckpointError as error:
                return self._recover(str(error))
            self._current = OurCodec(checkpoint, self._bundle_of(checkpoint))
            self._loaded_mtime = mtime
            marker = self._models_dir / CREATED_MARKER
            if not marker.exists():  # a home from before markers: from now on it is known
                write_atomic(marker, b"codec.ckpt created here\n")
        return self._current

    def _recover(self, problem: str) -> OurCodec:
        """``codec.ckpt`` is missing or damaged: the previous generation, else say what is lost."""
        path = self.checkpoint_path
        previous = previous_path(path)
        try:
            checkpoint = load_checkpoint(previous)
        except CheckpointError as previous_problem:
            if path.exists():
                raise CheckpointError(
                    f"{problem}; the previous generation is not usable either "
                    f"({previous_problem}); run 'parley doctor' to see what to do"
                ) from previous_problem
            self._warn(
                f"{problem} and no usable previous generation: started again from the "
                "shared initial codec (this node's personalised model is lost)"
            )
            return self.save(self._starting_point(), keep_previous=False)
        if path.exists():
            os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))  # kept for a look
        self._warn(
            f"{problem}; restored the previous generation (round {checkpoint.round}) "
            f"from {previous.name}"
        )
        return self.save(checkpoint, keep_previous=False)

    def _warn(self, text: str) -> None:
        event(log, logging.WARNING, "codec.recovered", reason=text)
        self.warnings.append(text)
        del self.warnings[:-MAX_WARNINGS]

    def reference_norm(self) -> float:
        """The norm of the shared starting codec: the fixed clip reference of every round
        (:func:`fl.aggregate.aggregate_round`), the same on every node with our config."""
        if self._reference_norm is None:
            state = self._starting_point().state
            self._reference_norm = float(
                np.sqrt(
                    sum(
                        float(np.sum(np.square(value, dtype=np.float64)))
                        for value in state.values()
                    )
                )
            )
        return self._reference_norm

    def _starting_point(self) -> Checkpoint:
        """The shipped pretrained codec when it fits our configuration, else the seeded init.

        Either way every node starts from the same weights, as federated averaging assumes.
        """
        config = self._default_config
        if DEFAULT_CHECKPOINT.exists():
            shipped = load_checkpoint(DEFAULT_CHECKPOINT)
            if shipped.codec_config == config:
                return Checkpoint(
                    codec_config=config,
                    state=shipped.state,
                    sample_count=0,
                    metadata={"source": "pretrained"},
                )
        return Checkpoint(
            codec_config=config,
            state=state_to_numpy(new_model(config)),
            metadata={"source": "init"},
        )

    def save(self, checkpoint: Checkpoint, *, keep_previous: bool = True) -> OurCodec:
        save_checkpoint(self.checkpoint_path, checkpoint, keep_previous=keep_previous)
        self._current = OurCodec(checkpoint, self._bundle_of(checkpoint))
        self._loaded_mtime = self.checkpoint_path.stat().st_mtime_ns
        return self._current

    @staticmethod
    def _bundle_of(checkpoint: Checkpoint) -> WeightsBundle:
        return bundle_from_state(
            checkpoint.state,
            architecture_id=checkpoint.codec_config.architecture_id,
            round=checkpoint.round,
            sample_count=max(1, checkpoint.sample_count),
        )

    # -- our enrolled audio ------------------------------------------------------------------

    def features_digest(self) -> str:
        """Names the set of enrolled feature files (they are named by content)."""
        if not self._features_dir.is_dir():
            return ""
        names = sorted(
            entry.name
            for entry in os.scandir(self._features_dir)
            if entry.name.endswith(FEATURE_SUFFIX)
        )
        return hashlib.blake2s("\n".join(names).encode()).hexdigest() if names else ""

    def load_features(self) -> list[npt.NDArray[np.float32]]:
        if not self._features_dir.is_dir():
            return []
        return load_features(self._features_dir, self._default_config.n_mels)

    # -- peers' decoders ---------------------------------------------------------------------

    def validated_state(self, bundle: WeightsBundle, config: CodecConfig) -> State:
        """A peer's bundle as weights for ``config``'s architecture; raises on anything wrong."""
        return state_from_bundle(
            bundle,
            expected_architecture_id=config.architecture_id,
            expected_shapes=expected_shapes(config),
        )

    def _peer_dir(self, public_key: bytes) -> Path:
        return self._models_dir / "peers" / format_peer_id(public_key)

    def keep_peer_decoder(self, public_key: bytes, bundle: WeightsBundle) -> Path:
        """Store a (validated) peer bundle as that peer's decoder for its codec version."""
        folder = self._peer_dir(public_key)
        # mkdir(parents=True) gives the parents the umask's mode, not ``mode``: make each.
        folder.parent.mkdir(exist_ok=True, mode=0o700)
        folder.mkdir(exist_ok=True, mode=0o700)
        path = folder / f"{bundle.content_hash.hex()}.bundle"
        if not path.exists():
            write_atomic(path, encode(bundle))
        kept = sorted(folder.glob("*.bundle"), key=lambda item: item.stat().st_mtime_ns)
        for stale in kept[:-MAX_DECODERS_PER_PEER]:
            stale.unlink(missing_ok=True)
        return path
