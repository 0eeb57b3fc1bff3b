"""The Calls page in headless Chromium during a real loopback call between two nodes (real codec,
tiny.en, translator and synthesizer): the call appears on the listener's Calls page, its page
shows captions arriving in both languages over server-sent events, and once the call ends the
captions in the browser are the ones the caller received (an independent view of the call)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import trio

from simulations.bench_call import (
    EN_TO_PT,
    SCRIPT_SENTENCES,
    call_over_loopback,
    open_call_pair,
    prepare_one_way,
)
from simulations.node_helpers import short_root
from tests.web.browser import open_browser, screenshot

pytestmark = pytest.mark.slow

SCRIPT = SCRIPT_SENTENCES[:3]


def _follow_call(driver, base: str, token: str, on_calls_page) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(condition, timeout: float, what: str):
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)

    driver.get(f"{base}/login?token={quote(token)}")
    driver.get(f"{base}/calls")
    on_calls_page()
    link = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#live-calls a"), 120, "a live call")
    link[0].click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#captions-speaker li"), 120, "a caption")
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#captions-translation li"), 120,
         "a translated caption")  # fmt: skip
    live_state = driver.find_element(By.ID, "call-state").text
    latency = driver.find_element(By.ID, "latency").text
    screenshot(driver, "call-live")
    wait(lambda d: d.find_element(By.ID, "call-state").text.startswith("Ended"), 240, "the end")
    spoken = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#captions-speaker li")]
    translated = [
        li.text for li in driver.find_elements(By.CSS_SELECTOR, "#captions-translation li")
    ]
    driver.refresh()  # the finished call's page: its audio with a track per language
    tracks = [
        t.get_attribute("srclang") for t in driver.find_elements(By.CSS_SELECTOR, "audio track")
    ]
    past_spoken = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#captions-speaker li")]
    screenshot(driver, "call-past")
    driver.get(f"{base}/calls")
    past = driver.find_elements(By.CSS_SELECTOR, "table tbody tr td a")
    screenshot(driver, "calls")
    return {
        "live_state": live_state,
        "latency": latency,
        "spoken": spoken,
        "translated": translated,
        "past_links": [a.get_attribute("href") for a in past],
        "past_tracks": tracks,
        "past_spoken": past_spoken,
    }


async def test_calls_page_shows_live_captions_of_a_loopback_call() -> None:
    setup = await prepare_one_way(SCRIPT)
    checkpoint, models, audio = setup.checkpoint, setup.models, setup.audio
    with short_root() as root:
        async with open_call_pair(
            root, caller_checkpoint=checkpoint, models=models, listener_web_port=0
        ) as pair:
            base = pair.listener.web_url
            assert base is not None
            token = (pair.listener.home.root / "web-token").read_text().strip()
            ready = trio.Event()
            seen: dict = {}

            def on_calls_page() -> None:
                trio.from_thread.run_sync(ready.set)

            async def browse() -> None:
                def drive() -> None:
                    with open_browser() as driver:
                        seen.update(_follow_call(driver, base, token, on_calls_page))

                await trio.to_thread.run_sync(drive)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(browse)
                with trio.fail_after(120):
                    await ready.wait()
                call = await call_over_loopback(
                    pair,
                    audio=audio,
                    request=EN_TO_PT,
                )
    assert seen["live_state"] == "Live"
    assert seen["latency"].split()[0] in ("en", "pt") and seen["latency"].endswith(" s")
    finals = call.captions.finals
    assert seen["spoken"] == [caption.text for caption in finals["en"]]
    assert seen["translated"] == [caption.text for caption in finals["pt"]]
    assert len(seen["spoken"]) >= 2
    assert sorted(seen["past_tracks"]) == ["en", "pt"]
    # The finished call's page is rendered from the listener's files (what a restart keeps).
    assert seen["past_spoken"] == [" ".join(text.split()) for text in seen["spoken"]]
    assert any(href.endswith(f"/calls/{call.record.call_dir.name}") for href in seen["past_links"])
