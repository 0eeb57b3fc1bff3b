"""Headless Debian Chromium driven by Selenium through Debian's chromedriver, for the browser
tests. The driver is started here (so its PID is ours to stop) and every process it started is
stopped by PID at the end, whatever happened."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Where the screenshots go (looked at by a person; see the issue's closing note).
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "build" / "web-screenshots"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests may run as root, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,1000",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first found, deepest last."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.append(int(child))
                    queue.append(int(child))
    return found


@contextmanager
def open_browser() -> Iterator[object]:
    """A Selenium ``WebDriver`` on headless Chromium; skips when Chromium is not installed."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver are not installed (make bootstrap)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    profile = Path(tempfile.mkdtemp(prefix="parley-chromium-"))
    port = _free_port()
    driver_process = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    driver = None
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or driver_process.poll() is not None:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.05)
        options = Options()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)
        driver.set_script_timeout(30)
        # The browser runs on this machine: file inputs take local paths as they are.
        from selenium.webdriver.remote.file_detector import UselessFileDetector

        driver.file_detector = UselessFileDetector()
        yield driver
    finally:
        browsers = _descendants(driver_process.pid)
        if driver is not None:
            with suppress(Exception):
                driver.quit()
        driver_process.terminate()
        try:
            driver_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver_process.kill()
            driver_process.wait()
        for pid in browsers:
            # Only a process that is still the browser we started (PIDs can be reused).
            with suppress(OSError):
                if b"chromium" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: object, name: str) -> Path:
    """The whole page (the window is stretched to the page's height for the shot)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    size = driver.get_window_size()  # type: ignore[attr-defined]
    height = driver.execute_script(  # type: ignore[attr-defined]
        "return Math.ceil(document.documentElement.scrollHeight);"
    )
    driver.set_window_size(size["width"], max(size["height"], min(int(height) + 140, 4000)))  # type: ignore[attr-defined]
    try:
        driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    finally:
        driver.set_window_size(size["width"], size["height"])  # type: ignore[attr-defined]
    return path
