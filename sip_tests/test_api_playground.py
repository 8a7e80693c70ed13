"""The playground page in headless Chromium (Debian's, driven by Playwright): type, play, hear, see latency."""

from __future__ import annotations

import shutil

import pytest

from .api_support import start_api_server

pytestmark = pytest.mark.timeout(120)
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_playground_plays_streamed_speech_and_shows_first_audio(tmp_path, fmt):
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is not installed: run `make test` (sip_tests/peers/debs-api.txt)")
    from playwright.sync_api import sync_playwright

    s = start_api_server(tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(s.url + "/", wait_until="load")
                if fmt == "mp3":  # the page's streamed path (Media Source Extensions) is the one exercised
                    assert page.evaluate("MediaSource.isTypeSupported('audio/mpeg')")
                page.wait_for_function("document.querySelectorAll('#voice option').length >= 1")
                page.fill("#text", "Hello from the playground. This is streamed speech.")
                page.select_option("#format", fmt)
                page.click("#play")
                page.wait_for_function("document.getElementById('latency').textContent.endsWith(' ms')",
                                       timeout=30_000)
                latency = page.text_content("#latency")
                assert latency is not None and 0 < int(latency.split()[0]) < 10_000
                # the audio element is playing: its clock advances
                page.wait_for_function("document.getElementById('audio').currentTime > 0.3", timeout=30_000)
                state = page.evaluate("() => { const a = document.getElementById('audio');"
                                      " return {paused: a.paused, error: a.error && a.error.code, t: a.currentTime}; }")
                assert state["error"] is None and state["t"] > 0.3, state
                assert page.text_content("#error") == "" and not errors, (page.text_content("#error"), errors)
            finally:
                browser.close()
    finally:
        s.srv.stop()
