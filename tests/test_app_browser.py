"""The Gradio app in a real browser: Debian's headless Chromium driven by Playwright (no downloaded browser).

Run as a script against a running app to make the README's screenshot:

    python app.py &
    python tests/test_app_browser.py http://127.0.0.1:7860/ docs/app_screenshot.png
"""

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium floods the closed network with refused connections (DESIGN.md).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # pandas 3 deprecations inside Gradio
]


@contextlib.contextmanager
def chromium_page(timeout_ms: int = 30_000) -> Iterator["sync_api.Page"]:
    """A page in a fresh headless Chromium with an empty profile."""
    with tempfile.TemporaryDirectory(prefix="t2i-chromium-") as profile, sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(timeout_ms)
        try:
            yield context.new_page()
        finally:
            context.close()


def generate(page: "sync_api.Page", prompt: str, num_images: int, seed: int) -> None:
    """Type a prompt, set the number of images and the seed, click Generate, and wait until the images show."""
    page.get_by_label("Describe a flower").fill(prompt)
    page.get_by_label("number input for Number of images").fill(str(num_images))
    page.get_by_label("Seed", exact=True).fill(str(seed))
    page.locator("#generate-button").click()
    sync_api.expect(page.locator("#generate-gallery img")).to_have_count(num_images)
    images_shown = "[...document.querySelectorAll('#generate-gallery img')].every(i => i.complete && i.naturalWidth)"
    page.wait_for_function(images_shown)


def test_generate_and_interpolate_in_chromium(app_url, tmp_path):
    expect = sync_api.expect
    with chromium_page() as page:
        page.goto(app_url)
        expect(page.locator("#model-info")).to_contain_text("app-tiny")

        # Generate: images appear, with the seed used; the upscaled view is extra and labelled as such.
        generate(page, "a flower with many thin yellow petals", 5, 123)
        expect(page.locator("#generate-summary")).to_contain_text("5 image(s) from seed 123")
        page.get_by_label("Also show an upscaled view").check()
        expect(page.locator("#upscaled-gallery img")).to_have_count(5)
        expect(page.locator("#upscaled-gallery")).to_contain_text("NOT model output")
        page.screenshot(path=tmp_path / "generate.png", full_page=True)

        # A prompt written as Markdown, HTML or LaTeX is shown in the summary exactly as typed, never rendered.
        typed = "**bold** [a link](http://example.com) <img src=x onerror=alert(1)> $$x^2$$ `code` _petals_ www.example.com"
        page.on("dialog", lambda dialog: pytest.fail(f"the prompt ran script: {dialog.message}"))
        generate(page, typed, 1, 5)
        expect(page.locator("#generate-summary")).to_contain_text(f"“{typed}”")
        for markup in ("img", "a", "em", "code", ".katex", "math"):
            expect(page.locator(f"#generate-summary {markup}")).to_have_count(0)
        expect(page.locator("#generate-summary strong")).to_have_text(["5"])  # the app's own bold seed, nothing else

        # Randomise puts a new seed in the box.
        page.get_by_role("button").filter(has_text="Randomise").click()
        expect(page.get_by_label("Seed", exact=True)).not_to_have_value("123")

        # Bad input: a visible message, the previous result is cleared (never shown under the error), and the app
        # keeps working.
        page.get_by_label("Describe a flower").fill("   ")
        page.locator("#generate-button").click()
        expect(page.get_by_text("the prompt is empty").first).to_be_visible()
        page.wait_for_timeout(11_000)  # Gradio's toasts fade after 10 s by default: the reason stays until closed
        expect(page.get_by_text("the prompt is empty").first).to_be_visible()
        expect(page.locator("#generate-summary")).not_to_contain_text("5 image(s) from seed 123")
        expect(page.locator("#generate-gallery img")).to_have_count(0)

        # 16 images: the gallery grows to show both rows whole (nothing cropped at its bottom).
        generate(page, "a flower with many thin yellow petals", 16, 7)
        gallery_bottom = page.locator("#generate-gallery").evaluate("e => e.getBoundingClientRect().bottom")
        last_image_bottom = page.locator("#generate-gallery img").last.evaluate("e => e.getBoundingClientRect().bottom")
        assert last_image_bottom <= gallery_bottom + 1

        # Two prompts, noise fixed: a strip of 8 images, downloadable as one PNG and as a GIF.
        page.get_by_role("tab").filter(has_text="Interpolate").first.click()
        page.locator("#interpolate-button").click()
        expect(page.locator("#strip-gallery img")).to_have_count(8)
        expect(page.locator("#interpolate-summary")).to_contain_text("8 steps from")
        expect(page.locator("a[download][href$='-strip.png']")).to_have_count(1)
        expect(page.locator("a[download][href$='.gif']")).to_have_count(1)

        # One prompt, two seeds: the strip is replaced.
        page.get_by_role("tab").filter(has_text="One prompt, two seeds").click()
        page.locator("#interpolate-noise-button").click()
        expect(page.locator("#interpolate-summary")).to_contain_text("noise moving from seed 0 to seed 1")
        page.screenshot(path=tmp_path / "interpolate.png", full_page=True)


if __name__ == "__main__":
    url, out = sys.argv[1], Path(sys.argv[2])
    with chromium_page() as page:
        page.set_viewport_size({"width": 1280, "height": 1040})
        page.goto(url)
        generate(page, "this flower has five pointed purple petals and a yellow center", 8, 2016)
        page.screenshot(path=out)
    Image.open(out).quantize(256).save(out, optimize=True)  # a few hundred KB instead of megabytes
    print(f"wrote {out}")
