"""``parley dub``: a video in, the same video speaking another language out.

Theory of operation
-------------------
1. **Check** the request before any work: the input is a readable video with audio and at most
   :data:`media.dub.video_source.MAX_VIDEO_S` long; the output does not exist (unless
   replacing was asked for); the translator and the target voice exist.
2. **Captions** of the original: its audio decoded to 16 kHz, transcribed in Whisper windows and
   cut into cues exactly as ``parley caption`` does (:func:`media.caption_file.transcribe_words`).
3. **Translation** one cue at a time (:mod:`media.translate`), and the speaker's voice traits
   (median pitch, speaking rate: :mod:`media.voice`) measured on the original.
4. **Speech**: each cue's translation synthesized in the target language with those traits,
   fitted into its slot (:mod:`media.dub.speech_track`), with every phoneme's time.
5. **Video stage**, frame by frame: find and follow the speaker's face
   (:mod:`media.dub.face_track`), plan the mouth shape at the frame's time from the phonemes
   (:mod:`media.dub.visemes`), warp the lips to it (:mod:`media.dub.mouth_warp`), encode. Frames
   without a face are passed through untouched.
6. **Write** the MP4 (:mod:`media.dub.mp4_writer`): video, the dub (default audio track), the
   original audio, captions in both languages. Written under a temporary name and renamed at
   the end: a failure leaves nothing.

Every stage's latency is recorded (:class:`media.dub.stage_stats.StageStats`): detection,
landmarks, viseme planning, warping, encoding, plus decoding and the speech stages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from media.audio import load_audio
from media.caption_file import FeatureDecoder, TranslatorFactory, transcribe_words
from media.captions import CaptionLayout, Cue, retime_text, segment_words
from media.dub.errors import DubError, OutputExistsError
from media.dub.espeak_timed import TimedEspeak
from media.dub.face_detect import FaceDetector
from media.dub.face_mesh import FaceMesh
from media.dub.face_track import FaceTracker
from media.dub.mouth_warp import MouthRegion, warp_mouth
from media.dub.mp4_writer import AUDIO_RATE, AudioTrack, Mp4Writer, SubtitleTrack
from media.dub.speech_track import DubbedSpeech, build_speech_track
from media.dub.stage_stats import StageStats
from media.dub.video_source import VideoInfo, iter_audio, iter_video_frames, probe_video
from media.dub.visemes import JawFromLoudness, MouthPlanner
from media.dub.yuv_patch import write_rgb_patch
from media.features import log_mel
from media.translate import language_key
from media.tts import TtsConfig
from media.voice import NoSpeechError, measure_voice_traits
from schemas.messages import VoiceTraits

__all__ = [
    "DubOptions",
    "DubResult",
    "Progress",
    "SpeechPlan",
    "VideoReport",
    "check_output",
    "dub_video",
    "plan_speech",
    "render_video",
]

#: ``progress(stage, fraction)``: stages "check", "transcribe", "translate", "speak", "video",
#: "done"; the fraction of the whole job, non-decreasing in [0, 1].
Progress = Callable[[str, float], None]
_SHARE_TRANSCRIBED: Final = 0.25
_SHARE_TRANSLATED: Final = 0.3
_SHARE_SPOKEN: Final = 0.4


@dataclass(frozen=True, slots=True, kw_only=True)
class DubOptions:
    target_language: str
    source_language: str = "en"
    #: (language, espeak-ng voice) overrides; the same defaults as calls' speech.
    espeak_voices: tuple[tuple[str, str], ...] = TtsConfig().espeak_voices
    lip_sync: bool = True
    crf: int = 16
    preset: str = "ultrafast"
    threads: int = 1
    replace: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True, eq=False)
class SpeechPlan:
    source_language: str
    source_cues: tuple[Cue, ...]
    target_cues: tuple[Cue, ...]
    speech: DubbedSpeech
    voice: VoiceTraits | None


@dataclass(eq=False)
class VideoReport:
    frames: int = 0
    frames_with_face: int = 0
    frames_warped: int = 0
    #: Per frame: the box (x0, y0, x1, y1) the warp changed, or ``None`` (for measurements).
    mouth_boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)
    #: Wall and CPU (this thread) seconds of the whole video stage.
    wall_s: float = 0.0
    cpu_s: float = 0.0


@dataclass(frozen=True, eq=False)
class DubResult:
    out_path: Path
    plan: SpeechPlan
    video: VideoReport
    stats: StageStats

    def summary(self) -> dict[str, object]:
        """The job summary: what was made, how the speech fitted, per-stage latencies."""
        fits: dict[str, int] = {}
        for cue in self.plan.speech.cues:
            fits[cue.fit.value] = fits.get(cue.fit.value, 0) + 1
        return {
            "output": str(self.out_path),
            "source_language": self.plan.source_language,
            "cue_count": len(self.plan.source_cues),
            "speech_fit": fits,
            "latest_speech_s": round(self.plan.speech.latest_s, 3),
            "trimmed_s": round(self.plan.speech.trimmed_s, 3),
            "frames": self.video.frames,
            "frames_with_face": self.video.frames_with_face,
            "frames_lip_synced": self.video.frames_warped,
            "video_fps": round(self.video.frames / self.video.wall_s, 2)
            if self.video.wall_s
            else None,
            "stages": self.stats.summary(),
        }


def _no_progress(stage: str, fraction: float) -> None:
    return None


def check_output(source: Path, out_path: Path, *, replace: bool) -> None:
    """Refuse an output that is the input, sits in no folder, or exists (unless ``replace``)."""
    if out_path.resolve() == source.resolve():
        raise DubError(f"{out_path}: the output would overwrite the input")
    if not out_path.parent.is_dir():
        raise DubError(f"{out_path.parent}: no such folder for the output")
    if out_path.exists() and (not replace or not out_path.is_file()):
        raise OutputExistsError(f"{out_path}: exists; use --force to replace it")


def dub_video(
    source: Path,
    out_path: Path,
    *,
    options: DubOptions,
    transcriber: FeatureDecoder,
    translator_factory: TranslatorFactory,
    progress: Progress | None = None,
) -> DubResult:
    """Dub ``source`` into ``options.target_language`` at ``out_path`` (module docstring)."""
    report = progress if progress is not None else _no_progress
    report("check", 0.0)
    check_output(source, out_path, replace=options.replace)
    info = probe_video(source)
    stats = StageStats()
    plan = plan_speech(
        source,
        info,
        options=options,
        transcriber=transcriber,
        translator_factory=translator_factory,
        progress=report,
        stats=stats,
    )
    video = render_video(
        source, out_path, info, plan, options=options, stats=stats, progress=report
    )
    report("done", 1.0)
    return DubResult(out_path, plan, video, stats)


def plan_speech(
    source: Path,
    info: VideoInfo,
    *,
    options: DubOptions,
    transcriber: FeatureDecoder,
    translator_factory: TranslatorFactory,
    progress: Progress,
    stats: StageStats,
) -> SpeechPlan:
    """Steps 2-4: captions, translation, fitted speech with phoneme times."""
    target = options.target_language
    if language_key(target) == language_key(options.source_language):
        raise DubError(f"the video is already in {options.source_language!r}: nothing to dub")
    translator = translator_factory(options.source_language, target)
    voice_name = dict((k.lower(), v) for k, v in options.espeak_voices).get(
        language_key(target), target
    )
    synthesizer = TimedEspeak(target, voice_name=voice_name)

    with stats.timed("transcribe"):
        audio = load_audio(source)

        def on_transcribe(stage: str, fraction: float) -> None:
            progress("transcribe", _SHARE_TRANSCRIBED * fraction)

        language, words, _ = transcribe_words(audio, transcriber, progress=on_transcribe)
    if not words:
        raise DubError(f"{source}: no speech was found to translate")
    if language_key(language) != language_key(options.source_language):
        translator = translator_factory(language, target)
    layout = CaptionLayout()
    source_cues = segment_words(words, layout=layout)
    with stats.timed("translate"):
        texts = translator.translate([cue.text for cue in source_cues])
    progress("translate", _SHARE_TRANSLATED)
    try:
        voice: VoiceTraits | None = measure_voice_traits(log_mel(audio), word_count=len(words))
    except NoSpeechError:
        voice = None
    with stats.timed("speak"):
        speech = build_speech_track(
            [cue.start_s for cue in source_cues],
            texts,
            duration_s=info.duration_s,
            synthesizer=synthesizer,
            voice=voice,
            sample_rate=AUDIO_RATE,
        )
    progress("speak", _SHARE_SPOKEN)
    placed = [
        Cue(index=n + 1, start_s=c.start_s, end_s=max(c.end_s, c.start_s + 0.01), lines=(c.text,))
        for n, c in enumerate(speech.cues)
    ]
    target_cues = retime_text(placed, [c.text for c in speech.cues], layout=layout)
    return SpeechPlan(language, tuple(source_cues), tuple(target_cues), speech, voice)


def _chunks(
    samples: npt.NDArray[np.float32], size: int = 48000
) -> Iterator[npt.NDArray[np.float32]]:
    for start in range(0, samples.size, size):
        yield samples[None, start : start + size]


def render_video(
    source: Path,
    out_path: Path,
    info: VideoInfo,
    plan: SpeechPlan,
    *,
    options: DubOptions,
    stats: StageStats,
    progress: Progress | None = None,
    tracker: FaceTracker | None = None,
) -> VideoReport:
    """Step 5-6: the video stage and the MP4. With ``options.lip_sync`` off, frames pass
    through untouched (the baseline the bench compares with)."""
    report = progress if progress is not None else _no_progress
    if tracker is None:
        tracker = FaceTracker(FaceDetector(), FaceMesh(), stats=stats)
    planner = MouthPlanner(
        plan.speech.phonemes,
        jaw=JawFromLoudness(plan.speech.samples, plan.speech.sample_rate),
    )
    target_name, source_name = options.target_language, plan.source_language
    writer = Mp4Writer(
        out_path,
        width=info.width,
        height=info.height,
        rate=info.rate,
        audio=[
            AudioTrack(target_name, f"{target_name} (dubbed)", 1, _chunks(plan.speech.samples)),
            AudioTrack(
                source_name,
                f"{source_name} (original)",
                info.audio_channels,
                iter_audio(source, rate=AUDIO_RATE, channels=info.audio_channels),
            ),
        ],
        subtitles=[
            SubtitleTrack(target_name, f"{target_name} captions", plan.target_cues),
            SubtitleTrack(source_name, f"{source_name} captions", plan.source_cues),
        ],
        crf=options.crf,
        preset=options.preset,
        threads=options.threads,
    )
    video = VideoReport()
    wall_start, cpu_start = time.perf_counter(), time.thread_time()
    try:
        frames = iter_video_frames(source, threads=options.threads)
        width, height = writer.size
        while True:
            with stats.timed("decode"):
                item = next(frames, None)
                if item is None:
                    break
                decoded, time_s = item
                if (decoded.width, decoded.height, decoded.format.name) != (
                    width,
                    height,
                    "yuv420p",
                ):
                    decoded = decoded.reformat(width=width, height=height, format="yuv420p")
                yuv = decoded.to_ndarray()
                rgb = decoded.to_ndarray(format="rgb24")
            region: MouthRegion | None = None
            landmarks = tracker.track(rgb)
            if landmarks is not None:
                video.frames_with_face += 1
            if options.lip_sync and landmarks is not None:
                with stats.timed("visemes"):
                    shape = planner.shapes(np.array([time_s])).at(0)
                with stats.timed("warp"):
                    region = warp_mouth(rgb, landmarks, shape)
                    if region is not None:
                        write_rgb_patch(yuv, rgb, region)
                if region is not None:
                    video.frames_warped += 1
            video.mouth_boxes.append(region.box if region is not None else None)
            with stats.timed("encode"):
                writer.add_yuv_frame(yuv, time_s)
            video.frames += 1
            if video.frames % 25 == 0:
                done = min(video.frames / info.frame_count, 1.0)
                report("video", _SHARE_SPOKEN + (1.0 - _SHARE_SPOKEN) * 0.99 * done)
        if video.frames == 0:
            raise DubError(f"{source}: no video frame decodes")
        with stats.timed("encode"):
            writer.commit(replace=options.replace)
    except BaseException:
        writer.abort()
        raise
    video.wall_s = time.perf_counter() - wall_start
    video.cpu_s = time.thread_time() - cpu_start
    if not math.isfinite(video.wall_s):
        video.wall_s = 0.0
    return video
