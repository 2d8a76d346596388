"""Make docs/screenshot-studio.png and docs/screens/train-live.png: the Train tab mid-run on the demo (zkq
stripes on builtin:shapes), started the way a newcomer would: "Try the demo", then Train.
Run: .venv/bin/python -m tests.browser.screenshot_studio"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.browser.studio_server import CHROMIUM_ARGS, REPO, set_number, studio_server, wait_progress, wait_ready


def main() -> int:
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with studio_server(tmp / "data") as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            wait_ready(page)
            page.get_by_role("tab", name="Train").click()
            page.locator("#train-demo").click()  # base, bundled dataset and preset in one click
            page.wait_for_function("document.querySelector('#train-base input').value.includes('shapes')")
            set_number(page, "cfg-sampling-every_n_steps", 60)
            page.locator("#train-start").click()
            try:
                if wait_progress(page, lambda p: p["step"] >= 190 or p["state"] == "failed", timeout=900,
                                 what="reached step 190")["state"] == "failed":
                    raise AssertionError("the run failed")
            except AssertionError:
                print(page.locator("#train-problems").inner_text(), file=sys.stderr)
                raise
            page.wait_for_timeout(1500)
            page.evaluate("window.scrollTo(0, 0)")
            screens = REPO / "docs" / "screens"
            screens.mkdir(parents=True, exist_ok=True)
            page.locator("#train-live").evaluate("e => e.scrollIntoView()")  # the live panel, as one scrolls to it
            page.wait_for_timeout(500)
            page.screenshot(path=str(screens / "train-live.png"))  # the 1440x900 viewport, as a user sees it
            page.evaluate("window.scrollTo(0, 0)")
            page.set_viewport_size({"width": 1440, "height": 1380})
            page.wait_for_timeout(1000)
            out = REPO / "docs" / "screenshot-studio.png"
            page.screenshot(path=str(out))
            page.locator("#train-stop").click()
            wait_progress(page, lambda p: p["state"] in ("stopped", "failed", "finished"), timeout=120)
            browser.close()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
