"""The pages in a real browser: headless Debian Chromium driven by Selenium, the node serving on
127.0.0.1 over real HTTP. A recording made with ffmpeg is uploaded through the page, its badge
turns ready without a reload, the player's ``video.textTracks`` hold the English and Portuguese
cues of the SRT files (parsed by the independent ``srt`` library), and choosing a transcript word
seeks the video there. Screenshots of each page go to build/web-screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import srt
import trio

from daemon.database import PeerSource, RoundStatus
from daemon.node import NodeOptions, open_node
from simulations.node_helpers import make_home, short_root
from tests.web.browser import open_browser, screenshot
from tests.web.helpers import make_recording, web_config

pytestmark = pytest.mark.slow

TRACKS_JS = """
const video = document.getElementById("player");
const done = arguments[arguments.length - 1];
for (const track of video.textTracks) track.mode = "hidden";  // load cues without showing them
const deadline = Date.now() + 20000;
(function check() {
  const tracks = [...video.textTracks];
  if (tracks.every((t) => t.cues && t.cues.length) || Date.now() > deadline) {
    done(tracks.map((t) => ({
      language: t.language, kind: t.kind,
      cues: t.cues ? [...t.cues].map((c) => [c.startTime, c.endTime, c.text]) : null,
    })));
  } else setTimeout(check, 100);
})();
"""


DROP_JS = """
const zone = document.getElementById("drop-zone");
const transfer = new DataTransfer();
transfer.items.add(new File(["x"], "dropped.webm", { type: "video/webm" }));
zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
return [document.getElementById("file-input").files[0].name,
        document.getElementById("upload-status").textContent];
"""


@pytest.fixture
def root() -> Iterator[Path]:
    with short_root() as path:
        yield path


def _wait(driver, condition, *, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)


def _upload_and_play(driver, base: str, token: str, media: Path) -> dict:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login?token={quote(token)}")
    assert driver.current_url == f"{base}/recordings"
    driver.execute_script("window.notReloaded = true;")
    # Drag and drop: a file dropped on the zone becomes the form's file.
    dropped = driver.execute_script(DROP_JS)
    assert dropped == ["dropped.webm", "Ready to upload dropped.webm."]
    driver.find_element(By.ID, "file-input").send_keys(str(media))
    to = driver.find_element(By.ID, "to-input")
    to.clear()
    to.send_keys("pt")
    driver.find_element(By.ID, "upload-button").click()
    _wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#recordings tr[data-id] .badge"),
        timeout=120,  # the upload's job is queued once the Portuguese translator is loaded
        what="the uploaded recording's row",
    )
    badge = driver.find_element(By.CSS_SELECTOR, "#recordings tr[data-id] .badge")
    first_status = badge.get_attribute("data-status")
    screenshot(driver, "recordings-processing")
    _wait(
        driver,
        lambda d: badge.get_attribute("data-status") in ("ready", "failed"),
        timeout=240,
        what="the badge to turn ready",
    )
    assert badge.get_attribute("data-status") == "ready", badge.text
    assert driver.execute_script("return window.notReloaded === true;"), "the page reloaded"
    screenshot(driver, "recordings")
    row = driver.find_element(By.CSS_SELECTOR, "#recordings tr[data-id]")
    recording_id = row.get_attribute("data-id")
    row.find_element(By.TAG_NAME, "a").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#transcript button.word"),
          timeout=30, what="the transcript")  # fmt: skip
    tracks = driver.execute_async_script(TRACKS_JS)
    default_track = driver.execute_script(
        "return [...document.querySelectorAll('track')].filter(t => t.default).map(t => t.srclang)"
    )
    words = driver.find_elements(By.CSS_SELECTOR, "#transcript button.word")
    target = words[len(words) // 2]
    start = float(target.get_attribute("data-start"))
    target.send_keys(" ")  # the keyboard works too: space on a focused word button
    target.click()
    _wait(driver, lambda d: d.execute_script("return document.getElementById('player').readyState") >= 1,
          timeout=20, what="the media to load")  # fmt: skip
    current = driver.execute_script(
        "const p = document.getElementById('player'); p.pause(); return p.currentTime;"
    )
    for track in driver.find_elements(By.TAG_NAME, "track"):
        if track.get_attribute("srclang") == "pt":
            driver.execute_script(
                "for (const t of document.getElementById('player').textTracks)"
                " t.mode = t.language === 'pt' ? 'showing' : 'disabled';"
            )
    screenshot(driver, "player")
    # Caption again, into a language no translator has: refused on the page, with the reason.
    languages = driver.find_element(By.ID, "regenerate-languages")
    languages.clear()
    languages.send_keys("xx")
    driver.find_element(By.CSS_SELECTOR, "#regenerate-form button").click()
    _wait(driver, lambda d: d.find_element(By.ID, "regenerate-status").text.startswith("Refused"),
          timeout=60, what="the refusal")  # fmt: skip
    refusal = driver.find_element(By.ID, "regenerate-status").text
    # Readable at 200% zoom: the layout wraps instead of scrolling sideways.
    driver.execute_script("document.body.style.zoom = '200%';")
    wide = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    screenshot(driver, "player-zoom-200")
    driver.execute_script("document.body.style.zoom = '';")
    driver.get(f"{base}/node")
    button = driver.find_element(By.CSS_SELECTOR, "button.trust-action")
    assert button.get_attribute("data-action") == "trust"
    button.click()  # a POST from the page's script, with the session's CSRF token
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#peers td.trust").text == "trusted",
          timeout=10, what="the peer to be trusted")  # fmt: skip
    screenshot(driver, "node")
    driver.get(f"{base}/calls")
    screenshot(driver, "calls-empty")
    return {
        "recording_id": recording_id,
        "first_status": first_status,
        "tracks": tracks,
        "default_track": default_track,
        "word_start": start,
        "current_time": current,
        "word_count": len(words),
        "overflow_at_200": wide,
        "refusal": refusal,
    }


def _caption_again_with_choices(driver, base: str, token: str, recording_id: str) -> None:
    """Caption again from the player page with a built-in Whisper, the spoken language named
    and silence kept: each choice is a control of the form."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{base}/login?token={quote(token)}")
    driver.get(f"{base}/recordings/{recording_id}")
    Select(driver.find_element(By.ID, "regenerate-model")).select_by_value("whisper:tiny.en")
    Select(driver.find_element(By.ID, "regenerate-task")).select_by_value("transcribe")
    driver.find_element(By.ID, "regenerate-language").send_keys("en")
    skip = driver.find_element(By.ID, "regenerate-skip-silence")
    assert skip.is_selected()  # on by default, as for `parley caption`
    skip.click()
    driver.find_element(By.CSS_SELECTOR, "#regenerate-form button").click()
    _wait(driver, lambda d: d.find_element(By.ID, "regenerate-status").text.startswith("Queued"),
          timeout=60, what="the new caption job to be queued")  # fmt: skip


def _cues(text: str) -> list[tuple[float, float, str]]:
    return [
        (cue.start.total_seconds(), cue.end.total_seconds(), cue.content) for cue in srt.parse(text)
    ]


async def test_upload_ready_without_reload_tracks_and_seek_in_chromium(root: Path) -> None:
    media = make_recording(root)
    home, _ = make_home(root, "n")
    config = web_config(enabled=True).replace("call", language="pt")
    async with open_node(home, config, NodeOptions(listen_port=0, web_port=0)) as node:
        assert node.web_url is not None
        token = (home.root / "web-token").read_text().strip()
        # The Node page's fixtures: a peer to trust, and rounds (with made-up losses) to plot.
        node.peers.observe(bytes(range(32)), name="alice", address=None, source=PeerSource.STATIC)
        for loss in (0.92, 0.81, 0.77, 0.70):
            record = node.rounds.begin(alpha=0.7, peers=["alice"])
            node.rounds.finish(
                record.round_number, status=RoundStatus.COMPLETED, peers=["alice"], n=2,
                loss_before=loss + 0.05, loss_after=loss, record={},
            )  # fmt: skip

        def drive() -> dict:
            with open_browser() as driver:
                return _upload_and_play(driver, node.web_url, token, media)

        seen = await trio.to_thread.run_sync(drive)
        async with httpx.AsyncClient(
            base_url=node.web_url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            expected = {}
            for lang in ("en", "pt"):
                response = await client.get(
                    f"/api/recordings/{seen['recording_id']}/captions?lang={lang}&format=srt"
                )
                expected[lang] = _cues(response.text)
        seen["trusted_after_click"] = node.peers.get(bytes(range(32))).trust.value

        def caption_again() -> None:
            with open_browser() as driver:
                _caption_again_with_choices(driver, node.web_url, token, seen["recording_id"])

        await trio.to_thread.run_sync(caption_again)
        seen["last_job_options"] = node.jobs.list()[-1].options
    assert seen["first_status"] in ("pending", "processing", "ready")
    by_language = {track["language"]: track for track in seen["tracks"]}
    assert set(by_language) == {"en", "pt"}
    for lang in ("en", "pt"):
        assert by_language[lang]["kind"] == "subtitles"
        cues = by_language[lang]["cues"]
        assert cues is not None and len(cues) == len(expected[lang]) > 0
        for (start, end, text), (srt_start, srt_end, srt_text) in zip(
            cues, expected[lang], strict=True
        ):
            assert start == pytest.approx(srt_start, abs=0.002)
            assert end == pytest.approx(srt_end, abs=0.002)
            assert text.split() == srt_text.split()
    # The user's language (call.language = pt) is the default track.
    assert seen["default_track"] == ["pt"]
    assert seen["word_count"] >= 8
    assert seen["current_time"] == pytest.approx(seen["word_start"], abs=0.1)
    assert seen["word_start"] > 0.5
    assert seen["trusted_after_click"] == "trusted"
    assert seen["overflow_at_200"] <= 0
    assert "xx" in seen["refusal"]
    # The page's choices reached the node's job as `parley caption` flags would.
    options = seen["last_job_options"]
    assert options["whisper"] == "tiny.en"
    assert options["language"] == "en"
    assert options["skip_silence"] is False
    assert options["to"] == ["pt"]
