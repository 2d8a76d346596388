"""Make docs/screenshot-studio.png: the Train tab mid-run on the tiny test model.
Run: .venv/bin/python -m tests.browser.screenshot_studio"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from tests.browser.studio_server import CHROMIUM_ARGS, REPO, choose, set_number, studio_server, wait_progress


def shapes(folder: Path, n: int = 6) -> list[Path]:
    out = []
    colours = [("red", (220, 40, 40)), ("blue", (40, 80, 220)), ("green", (40, 170, 70))]
    for i in range(n):
        name, rgb = colours[i % 3]
        im = Image.new("RGB", (128, 128), "white")
        d = ImageDraw.Draw(im)
        (d.ellipse if i % 2 else d.rectangle)((24, 24, 104, 104), fill=rgb)
        p = folder / f"sks_{i}.png"
        im.save(p)
        p.with_suffix(".txt").write_text(f"a sks shape, {name}, {'circle' if i % 2 else 'square'}")
        out += [p, p.with_suffix(".txt")]
    return out


def main() -> int:
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "up").mkdir()
        files = shapes(tmp / "up")
        with studio_server(tmp / "data") as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1380})
            page.goto(url)
            page.locator("#ds-upload input[type=file]").set_input_files([str(f) for f in files])
            page.locator("#ds-import-report").get_by_text("Added").wait_for(timeout=60_000)
            page.get_by_role("tab", name="Train").click()
            choose(page, "train-preset", "tiny-test")
            page.wait_for_function("document.querySelector('#train-base input').value.includes('Tiny')")
            set_number(page, "cfg-schedule-max_train_steps", 60)
            set_number(page, "cfg-sampling-every_n_steps", 10)
            page.locator("#train-run-name textarea, #train-run-name input").first.fill("sks-shapes")
            page.locator("#train-start").click()
            wait_progress(page, lambda p: p["step"] >= 24, timeout=600, what="reached step 24")
            page.wait_for_timeout(1500)
            page.evaluate("window.scrollTo(0, 0)")
            out = REPO / "docs" / "screenshot-studio.png"
            out.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(out))
            page.locator("#train-stop").click()
            wait_progress(page, lambda p: p["state"] in ("stopped", "failed", "finished"), timeout=120)
            browser.close()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
