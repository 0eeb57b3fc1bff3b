"""``parley dub`` end to end on real test videos: real Whisper, real translation, real espeak-ng,
BlazeFace + FaceMesh on LiteRT. Checked with PyAV (streams, languages, caption texts), with
FaceMesh reading the mouth back, and in headless Chromium when it is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from media.asr import FeatureTranscriber
from media.dub.errors import DubError, OutputExistsError, VideoFileError
from media.dub.measure import loudness_envelope, measure_openings, sync_figure
from media.dub.pipeline import DubOptions, dub_video
from media.dub.video_source import iter_frames
from media.translate import TranslationConfig, select_translator
from tests.speech import whisper_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _translator(source: str, target: str):
    return select_translator(source, target, TranslationConfig())


@pytest.fixture(scope="module")
def transcriber() -> FeatureTranscriber:
    return FeatureTranscriber(whisper_model())


def _dub(source: Path, out: Path, transcriber, **options):
    return dub_video(
        source,
        out,
        options=DubOptions(target_language="pt", **options),
        transcriber=transcriber,
        translator_factory=_translator,
    )


def _streams(path: Path) -> dict[str, list[tuple[str, str]]]:
    with av.open(str(path)) as container:
        found: dict[str, list[tuple[str, str]]] = {}
        for stream in container.streams:
            found.setdefault(stream.type, []).append(
                (stream.codec_context.name, stream.metadata.get("language", ""))
            )
        return found


def _captions(path: Path) -> list[list[str]]:
    texts: list[list[str]] = []
    with av.open(str(path)) as container:
        for stream in container.streams.subtitles:
            lines: list[str] = []
            container.seek(0)
            for packet in container.demux(stream):
                lines.extend(subtitle.dialogue.decode() for subtitle in stream.decode(packet))
            texts.append(lines)
    return texts


@pytest.fixture(scope="module")
def dubbed_one(material, transcriber, tmp_path_factory):
    out = tmp_path_factory.mktemp("dub") / "one.pt.mp4"
    return _dub(material["one"], out, transcriber)


def test_output_has_both_audio_and_both_caption_tracks(dubbed_one) -> None:
    streams = _streams(dubbed_one.out_path)
    assert streams["video"] == [("h264", "und")]
    assert streams["audio"] == [("aac", "por"), ("aac", "eng")]
    assert streams["subtitle"] == [("mov_text", "por"), ("mov_text", "eng")]
    portuguese, english = _captions(dubbed_one.out_path)
    assert "meeting" in " ".join(english).lower()
    assert portuguese and "meeting" not in " ".join(portuguese).lower()
    with av.open(str(dubbed_one.out_path)) as container:
        dub_track, original_track = container.streams.audio
        assert dub_track.disposition & av.stream.Disposition.default
        assert not original_track.disposition & av.stream.Disposition.default


def test_the_dub_track_is_the_new_speech_and_the_original_is_kept(dubbed_one, material) -> None:
    def audio(path: Path, index: int) -> np.ndarray:
        with av.open(str(path)) as container:
            stream = container.streams.audio[index]
            return np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])

    original_in = audio(material["one"], 0)
    original_out = audio(dubbed_one.out_path, 1)
    dub = audio(dubbed_one.out_path, 0)
    n = min(original_in.size, original_out.size) - 4096
    # AAC decoders delay by a frame or two: compare at the best small shift.
    best = max(
        np.corrcoef(original_in[shift : shift + n - 2048], original_out[: n - 2048])[0, 1]
        for shift in range(0, 4096, 64)
    )
    assert best > 0.9
    assert np.abs(dub).max() > 0.05
    assert abs(np.corrcoef(dub[:n], original_out[:n])[0, 1]) < 0.3


def test_lips_move_with_the_new_speech(dubbed_one, material) -> None:
    summary = dubbed_one.summary()
    assert summary["frames_with_face"] == summary["frames"] > 0
    assert summary["frames_lip_synced"] == summary["frames"]
    for stage in ("detect", "landmarks", "visemes", "warp", "encode"):
        assert summary["stages"][stage]["p50_ms"] > 0
    times, openings = measure_openings(dubbed_one.out_path)
    speech = dubbed_one.plan.speech
    envelope = loudness_envelope(speech.samples, speech.sample_rate, times, 0.04)
    dubbed = sync_figure(openings, envelope, frame_s=0.04)
    _, original_openings = measure_openings(material["one"])
    original = sync_figure(original_openings, envelope, frame_s=0.04)
    assert dubbed.correlation > 0.4
    assert abs(dubbed.lag_ms) <= 80
    assert dubbed.correlation > original.correlation + 0.2
    assert np.nanmax(openings) > np.nanmax(original_openings) + 0.05


def test_a_video_without_a_face_passes_through(material, transcriber, tmp_path) -> None:
    result = _dub(material["none"], tmp_path / "none.pt.mp4", transcriber)
    summary = result.summary()
    assert summary["frames_with_face"] == 0 and summary["frames_lip_synced"] == 0
    assert _streams(result.out_path)["audio"] == [("aac", "por"), ("aac", "eng")]
    before = [rgb for rgb, _ in iter_frames(material["none"])]
    after = [rgb for rgb, _ in iter_frames(result.out_path)]
    assert len(before) == len(after)
    # Only the encoder touched the frames.
    error = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(before, after, strict=True)])
    assert error < 1.5


def test_of_two_faces_only_the_larger_one_speaks(material, transcriber, tmp_path) -> None:
    result = _dub(material["two"], tmp_path / "two.pt.mp4", transcriber)
    assert result.summary()["frames_lip_synced"] == result.summary()["frames"]
    width = 480
    boxes = [box for box in result.video.mouth_boxes if box is not None]
    # The larger portrait is on the left (centre at 30 % of the width).
    assert all(box[2] < width / 2 for box in boxes)


def test_refusals_write_nothing(material, transcriber, tmp_path) -> None:
    existing = tmp_path / "taken.mp4"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        _dub(material["one"], existing, transcriber)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(DubError, match="overwrite the input"):
        _dub(material["one"], material["one"], transcriber, replace=True)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoFileError, match="not a readable video"):
        _dub(text, tmp_path / "out.mp4", transcriber)
    silent = tmp_path / "silent.mp4"
    with av.open(str(silent), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for number in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = number
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoFileError, match="no audio stream"):
        _dub(silent, tmp_path / "out.mp4", transcriber)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4", "silent.mp4", "taken.mp4"]


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PARLEY_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "dub", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def test_cli_dubs_and_never_overwrites_without_force(material, tmp_path) -> None:
    out = tmp_path / "talk.pt.mp4"
    done = _cli(
        str(material["one"]), "--to", "pt", "--out", str(out), "--json", home=tmp_path / "home"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["output"] == str(out) and summary["frames_lip_synced"] > 0
    assert out.is_file()
    stamp = out.stat().st_mtime_ns
    again = _cli(str(material["one"]), "--to", "pt", "--out", str(out), home=tmp_path / "home")
    assert again.returncode == 2
    assert (
        again.stderr.strip().splitlines()[-1] == f"parley: {out}: exists; use --force to replace it"
    )
    assert out.stat().st_mtime_ns == stamp
    missing = _cli(str(tmp_path / "nope.mp4"), "--to", "pt", home=tmp_path / "home")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr
    _play_in_chromium(out, tmp_path)


def _play_in_chromium(video: Path, folder: Path) -> None:
    """The MP4 must play in headless Chromium's <video> (Debian chromium + chromium-driver,
    driven by Selenium); skipped where they are not installed."""
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed: playback not checked")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-file-access-from-files",
    ):
        options.add_argument(flag)
    page = folder / "blank.html"
    page.write_text("<html><body></body></html>")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        driver.set_script_timeout(60)
        outcome = driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const video = document.createElement('video');
            video.muted = true;
            video.src = arguments[0];
            document.body.appendChild(video);
            video.addEventListener('error', () => done('ERROR ' + video.error.code));
            video.addEventListener('timeupdate', () => {
              if (video.currentTime > 0.5) done('PLAYED ' + video.videoWidth + 'x' + video.videoHeight);
            });
            video.play().catch(error => done('REJECTED ' + error));
            """,
            video.as_uri(),
        )
    finally:
        driver.quit()
    assert outcome == "PLAYED 480x270"
