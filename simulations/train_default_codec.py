"""Train the codec every node starts from, shipped as ``codec/pretrained/default.ckpt``.

A fresh node's codec must already carry speech well: it is what peers decode our voice with
before we ever enroll, and federated averaging assumes every node starts from the same weights.
So the shared starting point is not a random init but this model, trained on the training
split of the synthetic multi-speaker corpus (nine voices, Harvard lists 1-8; lists 9-10 stay
held out for evaluation). Reproduce it with::

    python -m simulations.train_default_codec [--steps 1500] [--out codec/pretrained/default.ckpt]

Training is deterministic for a given corpus, seed and thread count.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import argparse
import sys
from pathlib import Path

from codec.checkpoint import Checkpoint, save_checkpoint
from codec.config import CodecConfig
from codec.model import new_model, state_to_numpy
from codec.pretrained import DEFAULT_CHECKPOINT
from fl.config import TrainConfig
from fl.train import evaluate_l1, train_codec
from media.audio import load_audio
from media.features import log_mel
from simulations.corpus import build_corpus, default_cache_dir


def train_default(*, steps: int, out: Path, cache_dir: Path, train_per_speaker: int) -> float:
    corpus = build_corpus(cache_dir, train_per_speaker=train_per_speaker, heldout_per_speaker=4)
    train = [log_mel(load_audio(u.wav_path)) for s in corpus.speakers for u in s.train]
    heldout = [log_mel(load_audio(u.wav_path)) for s in corpus.speakers for u in s.heldout]
    config = CodecConfig()
    model = new_model(config)

    def progress(step: int, total: int, loss: float) -> None:
        if step % 100 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

    train_codec(model, train, TrainConfig(steps=steps, threads=2), progress=progress)
    heldout_l1 = evaluate_l1(model, heldout)
    save_checkpoint(
        out,
        Checkpoint(
            codec_config=config,
            state=state_to_numpy(model),
            sample_count=sum(item.shape[1] for item in train),
            metadata={
                "source": "pretrained",
                "corpus": f"{len(corpus.speakers)} synthetic voices x {train_per_speaker} "
                "Harvard sentences (lists 1-8)",
                "steps": steps,
                "heldout_l1": heldout_l1,
            },
        ),
    )
    return heldout_l1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--train-per-speaker", type=int, default=24)
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--cache-dir", type=Path, default=None)
    arguments = parser.parse_args()
    l1 = train_default(
        steps=arguments.steps,
        out=arguments.out,
        cache_dir=arguments.cache_dir or default_cache_dir(),
        train_per_speaker=arguments.train_per_speaker,
    )
    print(f"wrote {arguments.out} (held-out mel L1 {l1:.4f})")


if __name__ == "__main__":
    main()
