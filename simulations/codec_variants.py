"""Codec variants with fewer bits (lower frame rate, fewer levels), trained and cached under build/.

Every variant is trained on the same material as the shipped starting codec
(:mod:`simulations.train_default_codec`): the training split of the nine training voices
(:data:`simulations.corpus.DEFAULT_SPEAKERS`, Harvard lists 1-8). None of the unseen speakers of
:mod:`simulations.codec_unseen` is ever used here, so every figure measured on them is a figure
on voices the codec never heard.

A variant either starts from another variant's weights (same architecture, fewer levels: a short
fine-tune with the new quantizer) or from the seeded init (a new stride changes the shapes of the
down/up-sampling convolutions). Trained weights are cached as checkpoints named by variant, steps
and parent, so a re-run costs nothing and a changed recipe trains anew.

Reproduce::

    python -m simulations.codec_variants [--only NAME] [--threads 1]
"""

from __future__ import annotations

import common.offline  # noqa: F401

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from codec.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from codec.config import CodecConfig
from codec.model import CodecModel, new_model, state_to_numpy
from codec.pretrained import DEFAULT_CHECKPOINT
from fl.config import TrainConfig
from fl.train import train_codec
from media.audio import load_audio
from media.features import log_mel
from simulations.corpus import build_corpus, default_cache_dir

#: Same split as the shipped starting codec (simulations/train_default_codec.py).
TRAIN_PER_SPEAKER: Final = 24
DEFAULT_PARENT: Final = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """A codec setting: ``parent`` names the variant whose weights it starts from (or None)."""

    name: str
    stride: int
    latent_bits: int
    latent_dim: int = 32
    steps: int = 0
    parent: str | None = None

    @property
    def config(self) -> CodecConfig:
        return CodecConfig(
            stride=self.stride, latent_bits=self.latent_bits, latent_dim=self.latent_dim
        )


#: The shipped codec first (no training), then fewer levels and lower frame rates.
VARIANTS: Final[tuple[Variant, ...]] = (
    Variant(name=DEFAULT_PARENT, stride=4, latent_bits=5),
    Variant(name="s4b4", stride=4, latent_bits=4, steps=300, parent=DEFAULT_PARENT),
    Variant(name="s4b3", stride=4, latent_bits=3, steps=300, parent=DEFAULT_PARENT),
    Variant(name="s8b5", stride=8, latent_bits=5, steps=1000),
    Variant(name="s8b4", stride=8, latent_bits=4, steps=300, parent="s8b5"),
    Variant(name="s8b3", stride=8, latent_bits=3, steps=300, parent="s8b5"),
)


def variant(name: str) -> Variant:
    for candidate in VARIANTS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def variants_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "build" / "codec_variants"


def _cache_path(item: Variant, directory: Path) -> Path:
    parent = item.parent or "init"
    return (
        directory / f"{item.name}-{item.config.architecture_id}-st{item.steps}-from-{parent}.ckpt"
    )


def training_features(
    cache_dir: Path, train_per_speaker: int = TRAIN_PER_SPEAKER
) -> list[npt.NDArray[np.float32]]:
    """Log-mels of the training voices' training utterances (the first ``train_per_speaker``)."""
    corpus = build_corpus(cache_dir, train_per_speaker=train_per_speaker, heldout_per_speaker=0)
    return [log_mel(load_audio(u.wav_path)) for s in corpus.speakers for u in s.train]


def load_variant(
    item: Variant,
    *,
    cache_dir: Path,
    directory: Path | None = None,
    threads: int = 1,
    features: Sequence[npt.NDArray[np.float32]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CodecModel:
    """The trained model of ``item`` (from the cache, or trained now and cached)."""
    if item.parent is None and item.steps == 0:
        shipped = load_checkpoint(DEFAULT_CHECKPOINT)
        if shipped.codec_config.architecture_id != item.config.architecture_id:
            raise ValueError("the shipped checkpoint does not match the default variant")
        return new_model(item.config, shipped.state)
    folder = directory if directory is not None else variants_dir()
    path = _cache_path(item, folder)
    if path.is_file():
        return new_model(item.config, load_checkpoint(path).state)
    training = list(features) if features is not None else training_features(cache_dir)
    if item.parent is not None:
        parent = load_variant(
            variant(item.parent),
            cache_dir=cache_dir,
            directory=folder,
            threads=threads,
            features=training,
            progress=progress,
        )
        model = new_model(item.config, state_to_numpy(parent))
    else:
        model = new_model(item.config)
    if progress is not None:
        progress(f"training {item.name} ({item.steps} steps)")
    train_codec(model, training, TrainConfig(steps=item.steps, threads=threads, seed=0))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        path,
        Checkpoint(
            codec_config=item.config,
            state=state_to_numpy(model),
            sample_count=sum(int(mel.shape[1]) for mel in training),
            metadata={"source": "codec_variants", "variant": item.name, "steps": item.steps},
        ),
        keep_previous=False,
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=None, help="variant name(s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None)
    arguments = parser.parse_args()
    cache_dir = arguments.cache_dir or default_cache_dir()
    wanted = arguments.only or [item.name for item in VARIANTS]
    features = training_features(cache_dir)
    for name in wanted:
        load_variant(
            variant(name),
            cache_dir=cache_dir,
            threads=arguments.threads,
            features=features,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        print(f"{name} ready", flush=True)


if __name__ == "__main__":
    main()
