"""The codec on speakers it never met: ΔWER with intervals, exact active and average bitrates.

Theory of operation
-------------------
1. **Unseen speakers.** :data:`UNSEEN_SPEAKERS` are voices that no codec setting was trained on:
   the shipped starting codec and every variant (:mod:`simulations.codec_variants`) train on the
   nine :data:`~simulations.corpus.DEFAULT_SPEAKERS` only. They come from festival (a diphone
   voice of a speaker none of the training engines uses) and from espeak-ng voices, variants and
   accents that the training voices do not use, two of them with espeak-ng's Klatt synthesizer
   instead of its default one. No other English voice installs here: the only piper voice and
   the flite voices are training voices (flite's ``kal`` is the same recordings as ``kal16``, and
   festival's ``kal_diphone`` too), so they are left out.
2. **Material.** Every unseen speaker reads Harvard lists 9-10, which no codec trained on.
   Nothing is tuned on this material: the variants, the entropy prior (fitted on the training
   voices' training codes) and every setting below were fixed before it was decoded.
3. **Quality.** Whisper reads clean and decoded features in windows of joined utterances
   (:class:`simulations.codec_eval.Scorer`'s windows); each window's edits are split back onto
   its utterances by alignment (:mod:`simulations.codec_stats`), so ΔWER's 95 % interval is a
   paired bootstrap over utterances.
4. **Active-speech bitrate.** Each utterance is sent the way a call sends it: latent frames in
   payloads of ``ceil(batch_ms / frame_ms)`` frames (``call.batch_ms`` = 100 ms), every payload on
   its own (a payload must decode alone, so each range-coded one pays its own final word; the
   sender sends the shorter of that and the tagged packed form). The bitrate is the exact payload
   bits over the utterances' seconds; ``fixed`` is the untagged packed form.
5. **Average bitrate in conversation.** Every unseen speaker talks with a partner: turns of one
   or two of its utterances (0.4 s apart), then 0.6 s of silence, the partner's turn (the length
   of one or two other speakers' utterances, during which this side hears only a -66 dBFS noise
   floor), 0.6 s again. The sender's discontinuous transmission sends a latent frame only when the
   energy VAD (:class:`media.vad.EnergyVad`, default settings, with its 0.2 s hangover) marks one
   of its mel frames as speech, in payloads as above; nothing is sent in between (no comfort
   noise or keep-alive frames are counted). ``kbps_average`` is the bits sent over the whole
   conversation's seconds; ``conversation.sent_fraction`` the share of latent frames sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from codec.bundle import bundle_from_state
from codec.entropy import LatentPrior, encode_payload, fit_prior
from codec.latent import payload_size
from codec.model import CodecModel, decode_codes, encode_to_codes, state_to_numpy
from media.audio import load_audio
from media.features import FRAMES_PER_SECOND, FloatArray, log_mel
from media.vad import EnergyVad
from media.wer import WerCounts
from schemas.codec import encode as encode_wire_message
from simulations.codec_stats import (
    join_utterances,
    paired_bootstrap_delta,
    utterance_counts,
    utterance_windows,
)
from simulations.codec_variants import VARIANTS, Variant, load_variant, training_features
from simulations.corpus import SAMPLE_RATE, VoiceEngine, VoiceSpec, build_corpus

Progress = Callable[[str], None]

BATCH_MS: Final = 100
TURN_GAP_S: Final = 0.6
UTTERANCE_GAP_S: Final = 0.4
NOISE_FLOOR_DBFS: Final = -66.0

UNSEEN_SPEAKERS: Final[tuple[VoiceSpec, ...]] = (
    VoiceSpec(id="festival-ked", engine=VoiceEngine.FESTIVAL, voice="ked_diphone"),
    VoiceSpec(
        id="espeak-us-m7",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+m7",
        pitch=25,
        words_per_minute=160,
    ),
    VoiceSpec(
        id="espeak-rp-f3",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb-x-rp+f3",
        pitch=65,
        words_per_minute=150,
    ),
    VoiceSpec(
        id="espeak-029-m2",
        engine=VoiceEngine.ESPEAK,
        voice="en-029+m2",
        pitch=40,
        words_per_minute=170,
    ),
    VoiceSpec(
        id="espeak-nyc-f5",
        engine=VoiceEngine.ESPEAK,
        voice="en-us-nyc+f5",
        pitch=60,
        words_per_minute=145,
    ),
    VoiceSpec(
        id="espeak-klatt4-us",
        engine=VoiceEngine.ESPEAK,
        voice="en-us+klatt4",
        pitch=50,
        words_per_minute=155,
    ),
    VoiceSpec(
        id="espeak-klatt2-wmid",
        engine=VoiceEngine.ESPEAK,
        voice="en-gb-x-gbcwmd+klatt2",
        pitch=35,
        words_per_minute=165,
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnseenPlan:
    speakers: tuple[VoiceSpec, ...]
    utterances_per_speaker: int
    variants: tuple[str, ...]
    threads: int = 1
    resamples: int = 2000
    #: Training utterances per training voice that the entropy prior is fitted on (the variants
    #: themselves always train on the full split).
    prior_train_per_speaker: int = 24


QUICK_UNSEEN: Final = UnseenPlan(
    speakers=(UNSEEN_SPEAKERS[0], UNSEEN_SPEAKERS[1]),
    utterances_per_speaker=3,
    variants=("default",),
    resamples=500,
    prior_train_per_speaker=2,
)
FULL_UNSEEN: Final = UnseenPlan(
    speakers=UNSEEN_SPEAKERS,
    utterances_per_speaker=20,
    variants=tuple(item.name for item in VARIANTS),
)


@dataclass(frozen=True, slots=True, eq=False)
class UnseenSpeaker:
    id: str
    texts: tuple[str, ...]
    audio: tuple[FloatArray, ...]
    features: tuple[FloatArray, ...]


class WindowScorer:
    """Whisper on windows of joined utterances; per-utterance counts by alignment."""

    def __init__(self, transcribe: Callable[[FloatArray], str], *, window_frames: int) -> None:
        self._transcribe = transcribe
        self._window_frames = window_frames
        self.transcriptions = 0

    def counts(self, texts: Sequence[str], features: Sequence[FloatArray]) -> list[WerCounts]:
        result: list[WerCounts] = []
        lengths = [int(mel.shape[1]) for mel in features]
        for start, stop in utterance_windows(lengths, self._window_frames):
            hypothesis = self._transcribe(join_utterances(features[start:stop]))
            self.transcriptions += 1
            result.extend(utterance_counts(texts[start:stop], hypothesis))
        return result


def frames_per_payload(stride: int, batch_ms: int = BATCH_MS) -> int:
    frame_ms = 1000 * stride / FRAMES_PER_SECOND
    return max(1, math.ceil(batch_ms / frame_ms - 1e-9))


def payload_bits(
    codes: np.ndarray, *, bits: int, per_payload: int, prior: LatentPrior | None
) -> int:
    """Exact bits of ``codes`` sent as consecutive payloads of ``per_payload`` frames."""
    total = 0
    for start in range(0, len(codes), per_payload):
        chunk = codes[start : start + per_payload]
        if prior is None:
            total += 8 * payload_size(len(chunk), codes.shape[1], bits)
        else:
            total += 8 * len(encode_payload(chunk, bits=bits, prior=prior))
    return total


def sent_runs(sent: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of True in a boolean array."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for index, flag in enumerate(sent.tolist()):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    if start is not None:
        runs.append((start, len(sent)))
    return runs


@dataclass(frozen=True, slots=True)
class Conversation:
    features: FloatArray
    seconds: float


def conversation_for(
    speaker: UnseenSpeaker, partners: Sequence[UnseenSpeaker], seed: int
) -> Conversation:
    """One side of a two-party conversation (module docstring, 5)."""
    rng = np.random.default_rng(seed)
    noise_rms = 10 ** (NOISE_FLOOR_DBFS / 20)
    partner_lengths = [len(a) for p in partners for a in p.audio] or [SAMPLE_RATE * 2]

    def floor(samples: int) -> FloatArray:
        return (rng.standard_normal(samples) * noise_rms).astype(np.float32)

    parts: list[FloatArray] = []
    index = 0
    while index < len(speaker.audio):
        turn = int(rng.integers(1, 3))
        for offset, audio in enumerate(speaker.audio[index : index + turn]):
            if offset:
                parts.append(floor(int(UTTERANCE_GAP_S * SAMPLE_RATE)))
            parts.append(audio + floor(len(audio)))
        index += turn
        partner = sum(int(rng.choice(partner_lengths)) for _ in range(int(rng.integers(1, 3))))
        parts.append(floor(int(2 * TURN_GAP_S * SAMPLE_RATE) + partner))
    audio = np.concatenate(parts)
    return Conversation(features=log_mel(audio), seconds=len(audio) / SAMPLE_RATE)


def load_unseen(cache_dir: Path, plan: UnseenPlan, progress: Progress) -> list[UnseenSpeaker]:
    corpus = build_corpus(
        cache_dir,
        speakers=plan.speakers,
        train_per_speaker=0,
        heldout_per_speaker=plan.utterances_per_speaker,
        progress=progress,
    )
    speakers: list[UnseenSpeaker] = []
    for speaker in corpus.speakers:
        audio = tuple(load_audio(u.wav_path) for u in speaker.heldout)
        speakers.append(
            UnseenSpeaker(
                id=speaker.id,
                texts=tuple(u.text for u in speaker.heldout),
                audio=audio,
                features=tuple(log_mel(item) for item in audio),
            )
        )
    return speakers


def _decoded(model: CodecModel, mel: FloatArray) -> tuple[np.ndarray, FloatArray]:
    codes = encode_to_codes(model, mel)
    return codes, decode_codes(model, codes)[:, : mel.shape[1]]


def _fit_prior(model: CodecModel, training: Sequence[FloatArray]) -> LatentPrior:
    config = model.config
    codes = [encode_to_codes(model, mel) for mel in training]
    return fit_prior(codes, bits=config.latent_bits, latent_dim=config.latent_dim)


def _ci(values: tuple[float, float]) -> list[float]:
    return [round(values[0], 4), round(values[1], 4)]


def run_unseen(
    plan: UnseenPlan,
    *,
    cache_dir: Path,
    scorer: WindowScorer,
    progress: Progress,
) -> dict[str, Any]:
    """Every variant of ``plan`` on the unseen speakers (module docstring)."""
    speakers = load_unseen(cache_dir, plan, progress)
    clean = {s.id: scorer.counts(s.texts, s.features) for s in speakers}
    clean_all = [item for s in speakers for item in clean[s.id]]
    words = sum(item.reference_words for item in clean_all)
    wer_clean = sum(item.edits for item in clean_all) / words
    progress(f"unseen: clean WER {wer_clean:.4f} on {words} words")
    conversations = {
        s.id: conversation_for(s, [p for p in speakers if p.id != s.id], seed=index)
        for index, s in enumerate(speakers)
    }
    vad_speech: dict[str, np.ndarray] = {}
    for speaker_id, conversation in conversations.items():
        vad_speech[speaker_id] = EnergyVad().process(conversation.features).speech
    training: list[FloatArray] | None = None
    rows: list[dict[str, Any]] = []
    sent_fraction = 0.0
    for name in plan.variants:
        item = next(v for v in VARIANTS if v.name == name)
        if training is None:
            training = training_features(cache_dir, plan.prior_train_per_speaker)
        model = load_variant(item, cache_dir=cache_dir, threads=plan.threads)
        rows.extend(
            _measure_variant(
                item, model, speakers, clean, conversations, vad_speech, training, plan, scorer
            )
        )
        sent_fraction = rows[-1]["conversation_sent_fraction"]
        progress(f"unseen {name}: {rows[-2]} / {rows[-1]}")
    return {
        "speakers": [s.id for s in speakers],
        "engines": sorted({spec.engine.value for spec in plan.speakers}),
        "utterances": len(clean_all),
        "words": words,
        "wer_clean": round(wer_clean, 4),
        "batch_ms": BATCH_MS,
        "conversation": {
            "seconds": round(sum(c.seconds for c in conversations.values()), 1),
            "sent_fraction_last_setting": round(sent_fraction, 4),
            "dtx": "media.vad.EnergyVad speech frames (0.2 s hangover); silence frames not sent",
        },
        "settings": rows,
    }


def _measure_variant(  # noqa: PLR0917 - one private call site, every argument named there
    item: Variant,
    model: CodecModel,
    speakers: Sequence[UnseenSpeaker],
    clean: dict[str, list[WerCounts]],
    conversations: dict[str, Conversation],
    vad_speech: dict[str, np.ndarray],
    training: Sequence[FloatArray],
    plan: UnseenPlan,
    scorer: WindowScorer,
) -> list[dict[str, Any]]:
    config = model.config
    prior = _fit_prior(model, training)
    per_payload = frames_per_payload(config.stride)
    decoded_counts: list[WerCounts] = []
    clean_counts: list[WerCounts] = []
    l1_total, l1_count = 0.0, 0
    seconds = 0.0
    bits = {"fixed": 0, "entropy": 0}
    per_speaker: list[dict[str, Any]] = []
    for speaker in speakers:
        decoded: list[FloatArray] = []
        for mel in speaker.features:
            codes, out = _decoded(model, mel)
            decoded.append(out)
            l1_total += float(np.abs(out - mel).sum())
            l1_count += mel.size
            seconds += mel.shape[1] / FRAMES_PER_SECOND
            bits["fixed"] += payload_bits(
                codes, bits=config.latent_bits, per_payload=per_payload, prior=None
            )
            bits["entropy"] += payload_bits(
                codes, bits=config.latent_bits, per_payload=per_payload, prior=prior
            )
        counts = scorer.counts(speaker.texts, decoded)
        decoded_counts.extend(counts)
        clean_counts.extend(clean[speaker.id])
        speaker_words = sum(c.reference_words for c in counts)
        per_speaker.append(
            {
                "id": speaker.id,
                "delta_wer": round(
                    (sum(c.edits for c in counts) - sum(c.edits for c in clean[speaker.id]))
                    / speaker_words,
                    4,
                ),
            }
        )
    words = sum(c.reference_words for c in clean_counts)
    wer_clean = sum(c.edits for c in clean_counts) / words
    wer_codec = sum(c.edits for c in decoded_counts) / words
    interval = _ci(paired_bootstrap_delta(clean_counts, decoded_counts, resamples=plan.resamples))
    conversation_bits = {"fixed": 0, "entropy": 0}
    conversation_seconds = 0.0
    sent_frames = 0
    total_frames = 0
    for speaker in speakers:
        conversation = conversations[speaker.id]
        codes = encode_to_codes(model, conversation.features)
        speech = np.asarray(vad_speech[speaker.id], dtype=bool)
        padded = np.pad(speech, (0, len(codes) * config.stride - len(speech)))
        sent: np.ndarray = np.asarray(padded.reshape(len(codes), config.stride).any(axis=1))
        sent_frames += int(sent.sum())
        total_frames += len(codes)
        conversation_seconds += conversation.seconds
        for start, stop in sent_runs(sent):
            conversation_bits["fixed"] += payload_bits(
                codes[start:stop], bits=config.latent_bits, per_payload=per_payload, prior=None
            )
            conversation_bits["entropy"] += payload_bits(
                codes[start:stop], bits=config.latent_bits, per_payload=per_payload, prior=prior
            )
    rows: list[dict[str, Any]] = []
    for coding in ("fixed", "entropy"):
        bundle = bundle_from_state(
            state_to_numpy(model),
            architecture_id=config.architecture_id,
            round=0,
            sample_count=1,
            prior=prior if coding == "entropy" else None,
        )
        rows.append(
            {
                "name": f"{item.name}-{coding}",
                "stride": config.stride,
                "latent_bits": config.latent_bits,
                "latent_dim": config.latent_dim,
                "coding": coding,
                "frames_per_payload": per_payload,
                "kbps_fixed": round(config.kbps, 4),
                "kbps_active": round(bits[coding] / seconds / 1000, 4),
                "kbps_average": round(conversation_bits[coding] / conversation_seconds / 1000, 4),
                "conversation_sent_fraction": round(sent_frames / total_frames, 4),
                "wer_clean": round(wer_clean, 4),
                "wer_codec": round(wer_codec, 4),
                "delta_wer": round(wer_codec - wer_clean, 4),
                "delta_wer_ci95": interval,
                "mel_l1": round(l1_total / l1_count, 5),
                "bundle_bytes": len(encode_wire_message(bundle)),
                "per_speaker": per_speaker,
            }
        )
    return rows


def whisper_scorer(
    *, threads: int, window_s: float = 24.0, max_new_tokens: int = 160
) -> WindowScorer:
    """Whisper tiny.en with the evaluation's decoding options (greedy, one temperature)."""
    from media.asr import DecodeOptions, FeatureTranscriber
    from media.models import load_whisper

    options = DecodeOptions(
        beam_size=1,
        best_of=1,
        temperatures=(0.0,),
        word_timestamps=False,
        max_new_tokens=max_new_tokens,
    )
    transcriber = FeatureTranscriber(
        load_whisper(cpu_threads=threads, compute_type="float32"), options=options
    )

    def transcribe(features: FloatArray) -> str:
        return transcriber.transcribe_features(features).text

    return WindowScorer(transcribe, window_frames=int(window_s * FRAMES_PER_SECOND))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.codec_unseen --json FILE [--quick] [--variant NAME ...]``."""
    import argparse
    import json
    import sys

    from simulations.corpus import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    arguments = parser.parse_args(argv)
    base = QUICK_UNSEEN if arguments.quick else FULL_UNSEEN
    plan = UnseenPlan(
        speakers=base.speakers,
        utterances_per_speaker=base.utterances_per_speaker,
        variants=tuple(arguments.variant) if arguments.variant else base.variants,
        threads=arguments.threads,
        resamples=base.resamples,
        prior_train_per_speaker=base.prior_train_per_speaker,
    )
    result = run_unseen(
        plan,
        cache_dir=arguments.cache_dir or default_cache_dir(),
        scorer=whisper_scorer(threads=arguments.threads),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps({"unseen": result}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
