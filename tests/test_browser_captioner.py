"""The Dataset tab's Captioner in a real Chromium against a real studio: the tiny ONNX tagger captions the
images without a caption with a trigger word, the progress shows it, the new caption appears in the editor,
and a reloaded page finds the job again."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.browser.studio_server import ACTION_TIMEOUT_MS, CHROMIUM_ARGS, Shots, open_page, studio_server
from tests.caption_models import make_tagger

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("onnxruntime")


def _job_state(page) -> tuple[str | None, int]:
    el = page.locator("#cap-progress")
    if el.count() == 0:
        return None, 0
    return el.get_attribute("data-state"), int(el.get_attribute("data-done") or 0)


def test_captioner_tags_the_images_without_captions(tmp_path):
    data = tmp_path / "data"
    ds = data / "datasets" / "set"
    ds.mkdir(parents=True)
    for i, colour in enumerate([(230, 10, 10), (10, 10, 230), (230, 10, 10)]):
        Image.new("RGB", (48, 48), colour).save(ds / f"{i}.png")
    (ds / "1.txt").write_text("mine\n")
    make_tagger(data / "models" / "wd-tiny")
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = open_page({"browser": browser, "url": url})
        shots = Shots(page, "captioner")
        page.wait_for_function("(document.querySelector('#ds-gallery') || {}).innerText?.includes('3 image(s)')",
                               timeout=60_000)
        page.locator("#ds-captioner").get_by_text("Captioner").first.click()
        assert "wd-tiny" in page.locator("#cap-model input").first.input_value()
        page.locator("#cfg-caption-trigger textarea, #cfg-caption-trigger input").first.fill("zq")
        page.locator("#cap-start").click()
        page.wait_for_function("document.querySelector('#cap-progress')?.dataset.state === 'finished'",
                               timeout=240_000)
        shots("finished")
        assert _job_state(page) == ("finished", 2)
        assert (ds / "0.txt").read_text() == "zq, long hair, watermark, ^_^, solo\n"
        assert (ds / "1.txt").read_text() == "mine\n"
        # the tab's view is refreshed once the job ends: the open image's new caption is in the editor
        page.wait_for_function("document.querySelector('#ds-caption textarea')?.value.startsWith('zq, long hair')",
                               timeout=ACTION_TIMEOUT_MS)
        page.reload()
        page.locator("#ds-captioner").get_by_text("Captioner").first.click()
        page.wait_for_function("document.querySelector('#cap-progress')?.dataset.state === 'finished'",
                               timeout=60_000)
        assert _job_state(page) == ("finished", 2)  # the job folder is the state: a reload finds the job
        browser.close()
