"""The page of pmf serve in a real headless browser (Debian's chromium, driven by playwright): pick a class,
move a slider, generate, and the images appear with the class's label. Saves a screenshot (docs/serve.png
with PMF_SCREENSHOT=docs/serve.png, else under the test's temporary folder; PMF_SERVE_CHECKPOINT serves another
10-class checkpoint than the test's, e.g. a trained MNIST model for the documentation)."""

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`: "
                               "the test uses the system's chromium)")

from helpers import serve_args  # noqa: E402
from pmf.commands.serve import build  # noqa: E402
from test_serve_server import ServerThread  # noqa: E402  (the checkpoint fixture ckpt: conftest.py)

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get update && apt-get install -y chromium")
def test_page_generates_the_picked_class(ckpt, tmp_path):
    app, _, _ = build(serve_args(os.environ.get("PMF_SERVE_CHECKPOINT") or ckpt))
    shot = Path(os.environ.get("PMF_SCREENSHOT") or tmp_path / "serve.png")
    with ServerThread(app) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(srv.url + "/")
            page.wait_for_selector("#class-list button")
            page.wait_for_selector("#images figure")  # the page generates the default class on load
            page.uncheck("#auto")  # no live requests while the controls change: only the click below generates
            page.fill("#class-search", "7")  # searching narrows the list to one class, which is picked
            page.locator('#class-list button[data-cls="7"]').click()
            page.fill("#class-search", "")  # all classes again, 7 stays picked
            assert page.locator("#class-list button.on").inner_text() == "7"
            page.locator("#omega").fill("3.5")  # moves the slider (input event)
            page.fill("#count", "8")
            page.fill("#seed", "42")
            page.click("#generate")
            page.wait_for_function("""() => {
                const figs = [...document.querySelectorAll('#images figure')];
                const status = document.querySelector('#status').textContent;
                return figs.length === 8 && figs.every(f => f.dataset.label === '7')
                    && status.includes('seed 42') && status.includes('ms');
            }""", timeout=30000)
            labels = page.locator("#images figure figcaption .label").all_inner_texts()
            assert labels == ["7"] * 8
            status = page.inner_text("#status")
            assert "ms" in status and "ω 3.5" in status and "seed 42" in status
            links = page.locator("#images figure a[download]")
            assert links.count() == 8 and links.first.get_attribute("href").startswith("data:image/png;base64,")
            size = page.evaluate("state.info.image_size")
            assert page.locator("#images img").first.evaluate("img => img.naturalWidth") == size
            # a bad request shows the server's message and leaves the page usable
            page.evaluate("document.querySelector('#count').value = '999'")
            page.evaluate("state.info.limits.max_images = 9999")
            page.click("#generate")
            page.wait_for_selector("#error:not([hidden])")
            assert "classes" in page.inner_text("#error") and "limit" in page.inner_text("#error")
            page.fill("#count", "8")
            page.click("#generate")
            page.wait_for_selector("#error", state="hidden")
            page.wait_for_function("document.querySelectorAll('#images figure').length === 8")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()
