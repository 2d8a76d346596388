"""Seconds from pressing Train to the first visible feedback and to step 1, on the demo, in a real browser.

    python bench/train_feedback.py [--out bench/results/train_feedback.json] [--label before]
                                   [--think S] [--pairs N] [--threads N]

--think S: seconds between opening the Train tab and pressing Train (an artist reads the form; the studio
starts its warm trainer when the tab opens). --pairs N: N cold/warm pairs, alternating, the cold one with
the warm trainer switched off (ATELIER_WARM_TRAINER=0), so load drifts hit both alike. --threads N: the
torch threads of the studio and its trainers (default: torch's own, as `make run` starts them; rows in
bench/results/train_feedback.md before 2026-12-01 ran with 1).

A new studio on a fresh data folder, real Chromium: the demo's images go in through the Dataset tab (as
an artist would), the Train tab gets the demo preset, Train is pressed. "First feedback" is the first
change of the live panel (status line, progress box, phase line) after the press; "step 1" is when the
progress box first shows step ≥ 1. The run is then stopped. Load on the machine changes the numbers a lot:
note it beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser.studio_server import CHROMIUM_ARGS, choose, progress, studio_server  # noqa: E402

PANEL = ["#train-status", "#train-progress-box", "#train-phase", "#train-run-label"]


def panel_text(page) -> str:
    """What the live panel says, without Gradio's own pending timer ("1.3s")."""
    out = []
    for sel in PANEL:
        loc = page.locator(sel)
        if loc.count():
            out.append(loc.first.inner_text())
    return "\n".join(line for line in "\n".join(out).splitlines() if not re.fullmatch(r"[\d.]+s|processing.*|queue:.*", line.strip()))


def measure(timeout: float = 1800, think: float = 0.0, threads: str | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="feedback-"))
    data = root / "data"
    data.mkdir()
    files = sorted(str(p) for p in (REPO / "datasets" / "zkq-stripes").iterdir())
    with studio_server(data, omp_threads=threads) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.wait_for_selector("#ds-upload")
        page.locator("#ds-upload input[type=file]").set_input_files(files)
        page.locator("#ds-import-report").get_by_text("Added").wait_for(timeout=120_000)
        page.get_by_role("tab", name="Train").click()
        choose(page, "train-preset", "demo")
        page.wait_for_function("document.querySelector('#train-base input').value.includes('Demo')", timeout=60_000)
        page.wait_for_timeout(1000 + think * 1000)
        before = panel_text(page)
        t0 = time.monotonic()
        page.locator("#train-start").click()
        first = step1 = None
        first_text, timeline = "", []
        while time.monotonic() - t0 < timeout:
            now = time.monotonic() - t0
            text = panel_text(page)
            if not timeline or text != timeline[-1][1]:
                timeline.append((round(now, 1), text))
            if first is None and text != before:
                first, first_text = now, text
            if progress(page)["step"] >= 1:
                step1 = now
                break
            page.wait_for_timeout(250)
        page.locator("#train-stop").click()
        page.wait_for_timeout(3000)
        browser.close()
    return {"first_feedback_s": round(first, 1) if first is not None else None,
            "step1_s": round(step1, 1) if step1 is not None else None,
            "first_feedback_text": first_text[:300], "timeline": [(t, x[:200]) for t, x in timeline][:60], "load_avg": os.getloadavg(), "when": time.strftime("%F %T")}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--label", default="")
    ap.add_argument("--think", type=float, default=0.0)
    ap.add_argument("--pairs", type=int, default=0)
    ap.add_argument("--threads", default=None, help="OMP_NUM_THREADS of the studio and its trainers "
                    "(default: torch's own, as `make run` starts them)")
    a = ap.parse_args()
    kinds = [("cold", "0"), ("warm", "1")] * a.pairs or [("", os.environ.get("ATELIER_WARM_TRAINER", "1"))]
    for kind, warm in kinds:
        os.environ["ATELIER_WARM_TRAINER"] = warm  # the studio (and so its runner) inherits it
        res = {"label": " ".join(filter(None, [a.label, kind])), "think_s": a.think, **measure(think=a.think, threads=a.threads), "threads": a.threads or "torch default"}
        print(json.dumps(res, indent=1), flush=True)
        if a.out:
            p = Path(a.out)
            old = json.loads(p.read_text()) if p.exists() else []
            p.write_text(json.dumps(old + [res], indent=1) + "\n")
