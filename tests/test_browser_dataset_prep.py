"""Issue #16's walk through preparing a dataset, in a real Chromium against a real studio: upload pictures,
caption those without a caption with the (tiny ONNX) tagger and a trigger word while the progress shows,
rename a tag across 10 images in the tag editor and undo it, paint a mask on one image, then train 2 steps
with masked loss on: the run's events say masked loss was used, on that one image."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser.studio_server import (ACTION_TIMEOUT_MS, CHROMIUM_ARGS, Shots, choose, open_page, open_tab,
                                        studio_server, wait_ready)
from tests.caption_models import make_tagger

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("onnxruntime")

COUNTS = "document.querySelector('#ds-te-counts .virtual-body').textContent"  # the tag table's shown rows


def _text(page, elem_id: str, text: str, timeout: float = 120) -> None:
    page.locator(f"#{elem_id}").get_by_text(text).first.wait_for(timeout=timeout * 1000)


def _events(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def caption(ds: Path, name: str) -> str:
    return next(ds.rglob(name)).read_text()


def paint_stroke(page, editor, x0: float, x1: float, y: float) -> None:
    """Drag the brush across the painter's canvas from x0 to x1 at height y (fractions of the canvas)."""
    editor.get_by_role("button", name="Brush").first.click()
    canvas = editor.locator("canvas").first
    canvas.scroll_into_view_if_needed()  # the mouse reaches only what is in the viewport
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y)
    page.mouse.down()
    # few pointer events: headless Chromium without a GPU draws the editor's WebGL canvas in software, up to
    # seconds per event on a loaded machine (20 events took 100-160 s); the brush joins the points with a stroke
    page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y, steps=3)
    page.mouse.up()


def test_upload_tag_rename_undo_paint_a_mask_and_train_with_it(tmp_path):
    data = tmp_path / "data"
    make_tagger(data / "models" / "wd-tiny")
    files = tmp_path / "upload"
    files.mkdir()
    for i in range(12):  # 10 red pictures (the tiny tagger calls them "long hair"), 2 blue ones ("blue sky")
        Image.new("RGB", (64, 64), (230, 10, 10) if i < 10 else (10, 10, 230)).save(files / f"p{i:02d}.png")
    (files / "p11.txt").write_text("mine\n")  # one already has a caption: the tagger leaves it alone
    ds = data / "datasets" / "my-dataset"
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = open_page({"browser": browser, "url": url}, 1440, 1000)
        shots = Shots(page, "dataset_prep")
        page.locator("#ds-upload input[type=file]").set_input_files(sorted(str(p) for p in files.iterdir()))
        _text(page, "ds-import-report", "Added")
        page.locator("#ds-gallery").get_by_text("12 image(s)").first.wait_for(timeout=ACTION_TIMEOUT_MS)

        # the tagger on the images without a caption, with a trigger word; the progress shows the job
        page.locator("#ds-captioner").get_by_text("Captioner").first.click()
        # the opened accordion mounts its fields: a value typed at once was lost in 2 of 11 idle runs
        page.wait_for_timeout(500)
        assert "wd-tiny" in page.locator("#cap-model input").first.input_value()
        page.locator("#cfg-caption-trigger textarea, #cfg-caption-trigger input").first.fill("zq")
        page.locator("#cap-start").click()
        _text(page, "cap-msg", "trigger word “zq” first")  # the job got the trigger word
        page.wait_for_function("document.querySelector('#cap-progress')?.dataset.state === 'finished'",
                               timeout=240_000)
        assert page.locator("#cap-progress").get_attribute("data-done") == "11"
        shots("captioned")
        assert caption(ds, "p00.txt") == "zq, long hair, watermark, ^_^, solo\n"
        assert caption(ds, "p10.txt") == "zq, blue sky, watermark, ^_^, solo\n"
        assert caption(ds, "p11.txt") == "mine\n"
        before = {p.name: p.read_bytes() for p in ds.rglob("*.txt")}
        # the editor shows the open image's new caption once the job has ended
        page.wait_for_function("document.querySelector('#ds-caption textarea')?.value.startsWith('zq, long hair')",
                               timeout=ACTION_TIMEOUT_MS)

        # the tag editor: the 10 "long hair" images picked from the tag table, renamed, then undone
        page.locator("#ds-tagedit").get_by_text("Tag editor").first.click()
        page.wait_for_function(f"{COUNTS}.includes('long hair')", timeout=ACTION_TIMEOUT_MS)
        page.locator("#ds-te-counts .virtual-body").get_by_text("long hair", exact=True).first.click()
        _text(page, "ds-te-selected", "10 of 12 image(s) selected")
        page.locator("#ds-te-new textarea, #ds-te-new input").first.fill("red hair")
        page.locator("#ds-te-apply").click()
        _text(page, "ds-te-msg", "Changed 10 caption(s)")
        assert caption(ds, "p03.txt") == "zq, red hair, watermark, ^_^, solo\n"
        page.wait_for_function(f"{COUNTS}.includes('red hair')", timeout=ACTION_TIMEOUT_MS)
        shots("renamed")
        page.locator("#ds-te-undo").click()
        _text(page, "ds-te-msg", "restored 10 caption(s)")
        assert {p.name: p.read_bytes() for p in ds.rglob("*.txt")} == before

        # a mask painted over the open image (p00)
        page.get_by_text("Mask (train on part of the picture)").first.click()
        page.locator("#ds-mask-load").click()
        _text(page, "ds-mask-msg", "Painting")
        paint_stroke(page, page.locator("#ds-mask-editor"), 0.35, 0.65, 0.5)
        page.locator("#ds-mask-save").click()
        _text(page, "ds-mask-msg", "Saved")
        masks = list(ds.rglob("*_mask.png"))
        assert len(masks) == 1 and masks[0].name == "p00_mask.png", masks
        mask = np.asarray(Image.open(masks[0]))
        assert mask.shape == (64, 64) and mask.max() == 255 and mask.min() == 0  # painted and unpainted parts
        _text(page, "ds-doctor", "1 of 12 image(s) have a mask")
        shots("mask")

        # 2 steps with masked loss on
        page.locator("button[role=tab]", has_text="Train").first.click()
        choose(page, "train-dataset", "my-dataset")
        choose(page, "train-preset", "tiny-test")
        page.wait_for_function("document.querySelector('#train-base input').value.includes('Tiny')", timeout=60_000)
        page.locator("#cfg-schedule-max_train_steps input[type=number]").first.fill("2")
        page.locator("#cfg-sampling-every_n_steps input[type=number]").first.fill("0")
        page.locator("#cfg-sampling-at_start input").uncheck()
        page.locator("#cfg-sampling-prompts textarea").fill("")
        page.get_by_text("Noise & loss", exact=True).first.click()  # its accordion starts folded
        page.locator("#cfg-noise-masked_loss input").check()
        page.locator("#train-start").click()
        runs = data / "runs"
        deadline = time.monotonic() + 600
        while not any(e.get("type") == "finished" for r in runs.glob("*") for e in _events(r)):
            assert time.monotonic() < deadline, "the masked run never finished"
            time.sleep(0.5)
        run = next(r for r in runs.glob("*") if any(e.get("type") == "finished" for e in _events(r)))
        ev = _events(run)
        started = next(e for e in ev if e["type"] == "started")
        assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "finished", ev[-3:]
        assert started["masked_loss"] is True and started["masked_images"] == 1, started

        # the caption job's folder is its state: a reloaded page finds the finished job
        page.reload()
        # the run's process may still be exiting after its "finished" event: then the load re-attaches it on
        # the Train tab, as for any run that trains, and the Dataset tab is a click away
        wait_ready(page)
        open_tab(page, "Dataset")
        page.locator("#ds-captioner").get_by_text("Captioner").first.click()
        page.wait_for_function("document.querySelector('#cap-progress')?.dataset.state === 'finished'",
                               timeout=60_000)
        browser.close()
