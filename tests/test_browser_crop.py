"""The Dataset tab's crop panel in a real Chromium against a real studio server: a click on the picture sets the
focus point, Save writes the `.crop.json` the trainer reads, Clear removes it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.browser.studio_server import ACTION_TIMEOUT_MS, CHROMIUM_ARGS, studio_server, wait_ready, wait_until
from trainer.data.scan import scan_dataset

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")


def test_click_sets_the_focus_point_and_save_writes_what_the_trainer_reads(tmp_path):
    src = tmp_path / "files"
    src.mkdir()
    x = np.linspace(0, 255, 300, dtype=np.float32)[None, :].repeat(100, 0)
    Image.fromarray(np.stack([x, x, x], -1).astype(np.uint8)).save(src / "wide.png")
    data = tmp_path / "data"
    data.mkdir()
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#ds-upload")
        wait_ready(page)
        page.wait_for_function("(document.querySelector('#ds-gallery') || {}).innerText?.includes('image(s)')",
                               timeout=60_000)
        box = page.locator("#ds-name input").first
        box.fill("crops")
        box.press("Enter")
        page.locator("#ds-upload input[type=file]").set_input_files([str(src / "wide.png")])
        root = data / "datasets" / "crops"
        wait_until(lambda: (root / "images" / "wide.png").exists(), "wide.png stored")
        page.locator("#ds-image input").first.wait_for()
        page.wait_for_function("document.querySelector('#ds-image input').value == 'images/wide.png'", timeout=60_000)

        page.locator("#ds-crop").get_by_text("Crop and focus point").first.click()
        pic = page.locator("#ds-crop-pic img").first
        pic.wait_for(timeout=60_000)
        page.locator("#ds-crop-msg").get_by_text("No crop file").first.wait_for(timeout=60_000)
        page.wait_for_function("document.querySelector('#ds-crop-pic img').naturalWidth > 0", timeout=60_000)
        # where the picture is drawn inside its element (scaled to fit, never up, centred), as Gradio computes it
        x, y = pic.evaluate("""i => { const r = i.getBoundingClientRect();
            const s = Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight, 1);
            return [(r.width - i.naturalWidth * s) / 2 + 0.1 * i.naturalWidth * s,
                    (r.height - i.naturalHeight * s) / 2 + 0.5 * i.naturalHeight * s]; }""")
        pic.click(position={"x": x, "y": y})
        page.wait_for_function("document.querySelector('#ds-crop-use-focus input').checked", timeout=60_000)
        page.locator("#ds-crop-save").click()
        crop = root / "images" / "wide.crop.json"
        wait_until(crop.exists, "wide.crop.json written")
        fx, fy = json.loads(crop.read_text())["focus"]
        assert abs(fx - 0.1) < 0.03 and abs(fy - 0.5) < 0.03, (fx, fy)
        item = scan_dataset(root).items[0]
        assert item.focus == (fx, fy) and item.crop_box is None
        page.locator("#ds-crop-msg").get_by_text("Saved").first.wait_for(timeout=60_000)
        assert page.locator("#ds-crop-seen img").count() == 1  # what the trainer sees is shown

        page.locator("#ds-crop-clear").click()
        wait_until(lambda: not crop.exists(), "wide.crop.json removed")
        page.wait_for_function("!document.querySelector('#ds-crop-use-focus input').checked", timeout=60_000)
        browser.close()
