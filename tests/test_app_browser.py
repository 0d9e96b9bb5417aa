"""A real headless Chromium (Debian's, via Playwright) uses the demo like a visitor."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from test_app_handlers import tone
from test_app_launch import launched_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

OUTPUTS_READY = """() => {
  const audio = (id, file) => document.querySelector(
    `#${id} a[data-testid="download-link"][href$="/${file}"]`);
  const info = [...document.querySelectorAll('#info textarea')]
    .some(t => t.value.startsWith('query:'));
  const picture = document.querySelector('#spectrograms img[src]');
  return Boolean(info && picture && audio('target-audio', 'flute.wav')
    && audio('residual-audio', 'residual.wav'));
}"""

EXAMPLE_DONE = """() => [...document.querySelectorAll('#info textarea')]
  .some(t => t.value.startsWith("query: text 'cello'") && t.value.includes('+'))"""


TWO_STEMS_READY = """() => Boolean(document.querySelector(
  '#stem-2-audio a[data-testid="download-link"][href$="/cello.wav"]'))"""


def test_visitor_uploads_queries_and_gets_both_outputs(tmp_path, artifacts_dir):
    playwright = pytest.importorskip("playwright.sync_api")
    sf.write(tmp_path / "mixture.wav", tone(3.0).T, 22050)
    with launched_app(tmp_path) as (url, _, _), playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            viewport={"width": 1280, "height": 1000},
            args=CHROMIUM_FLAGS,
        )
        try:
            page = context.new_page()
            page.goto(url, wait_until="networkidle")
            page.locator("input[type=file]").first.set_input_files(str(tmp_path / "mixture.wav"))
            page.get_by_label("Text query").fill("flute")
            page.get_by_role("button", name="Separate", exact=True).click()
            page.wait_for_function(OUTPUTS_READY, timeout=60_000)
            page.wait_for_timeout(500)  # let the waveforms draw before the picture is taken
            shot = artifacts_dir / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert "text 'flute'" in page.locator("#info textarea").input_value()
            assert page.locator(".toast-body").count() == 0  # no error shown
            page.get_by_role("button", name="cello + flute -> cello").click()  # one-click example
            page.wait_for_function(EXAMPLE_DONE, timeout=60_000)
            page.get_by_label("Text query").fill("flute, cello")  # two stems, then the residual
            page.get_by_role("button", name="Separate", exact=True).click()
            page.wait_for_function(TWO_STEMS_READY, timeout=60_000)
            players = ("target-audio", "stem-2-audio", "residual-audio")
            tops = [page.locator(f"#{name}").bounding_box()["y"] for name in players]
            assert tops == sorted(tops)  # the stems, in query order, above the residual
            assert "Stem: flute" in page.locator("#target-audio").inner_text()
            assert "Stem: cello" in page.locator("#stem-2-audio").inner_text()
        finally:
            context.close()
    assert shot.stat().st_size > 20_000
