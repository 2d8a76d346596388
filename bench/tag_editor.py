"""The tag editor's server-side cost on a tagged dataset (default 500 images, WD14-like captions of ~25 tags from
a vocabulary of 600). Not a test: seconds per step, the median of --repeat runs, with the machine's load beside
them. What the page waits for besides (Gradio's round trip, the browser drawing the table) is not in here.

    python bench/tag_editor.py                  # 500 images
    python bench/tag_editor.py --images 50

Steps: the tag table (every caption read, tags counted as the trainer counts them), picking the images with a
tag, planning a rename across them (the preview), applying it (the captions written together) and undoing it.
With --browser, the same in a real studio in Chromium, from the click until the page shows the result (once).
Prints a Markdown table; writes bench/results/tag_editor.md unless --out says elsewhere."""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ui import dataset_files as df  # noqa: E402
from ui import tag_edits as te  # noqa: E402


def make(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = random.Random(seed)
    vocab = [f"tag {i}" for i in range(600)]
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (i % 256, 80, 120)).save(root / "images" / f"{i:04d}.png")
        tags = ["sks", "red hair", *rng.sample(vocab, 24), *(["blue eyes"] if i % 2 else [])]
        (root / "images" / f"{i:04d}.txt").write_text(", ".join(tags) + "\n")


def browser_steps(n: int) -> list[tuple[str, float]]:
    """Seconds from each click until the page shows its result, in a studio on a fresh data folder."""
    from playwright.sync_api import sync_playwright

    from tests.browser.studio_server import ACTION_TIMEOUT_MS, CHROMIUM_ARGS, choose, studio_server

    counts = "document.querySelector('#ds-te-counts .virtual-body').textContent"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make(data / "datasets" / "big", n)
        with studio_server(data) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(ACTION_TIMEOUT_MS)
            page.goto(url)
            page.wait_for_function("(document.querySelector('#ds-gallery') || {}).innerText?.includes('image(s)')",
                                   timeout=ACTION_TIMEOUT_MS)

            def step(name, act, done):
                t = time.perf_counter()
                act()
                page.wait_for_function(done, timeout=ACTION_TIMEOUT_MS)
                rows.append((name, time.perf_counter() - t))

            step("open the tag editor: tag table shown", lambda: page.locator("#ds-tagedit").get_by_text(
                "Tag editor").first.click(), f"{counts}.includes('red hair')")
            step("pick the images with a tag (all)", lambda: choose(page, "ds-te-has", "red hair"),
                 f"document.querySelector('#ds-te-selected').innerText.includes('{n} of {n}')")
            choose(page, "ds-te-tag", "red hair")
            page.locator("#ds-te-new textarea, #ds-te-new input").first.fill("crimson hair")
            step(f"rename: preview ({n} captions)", lambda: page.locator("#ds-te-preview").click(),
                 f"document.querySelector('#ds-te-msg').innerText.includes('{n} caption(s) would change')")
            step(f"rename: apply ({n} captions), until the table shows the new name",
                 lambda: page.locator("#ds-te-apply").click(),
                 f"document.querySelector('#ds-te-msg').innerText.includes('Changed {n}')"
                 f" && {counts}.includes('crimson hair')")
            step("rename: undo, until the table shows the old name", lambda: page.locator("#ds-te-undo").click(),
                 f"document.querySelector('#ds-te-msg').innerText.includes('restored {n}')"
                 f" && !{counts}.includes('crimson hair')")
            browser.close()
    return rows


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tag_editor.md")
    ap.add_argument("--browser", action="store_true", help="also time the steps in a studio in Chromium")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        make(root, a.images)
        rows = []
        s, counts = timed(lambda: df.tag_frequency(root), a.repeat)
        rows.append((f"tag table ({len(counts)} tags)", s))
        s, picked = timed(lambda: te.select(te.captions(root), ["blue eyes"]), a.repeat)
        rows.append((f"pick the images with a tag ({len(picked)})", s))
        rels = te.select(te.captions(root), ["red hair"])  # every image: the rename goes across all of them
        s, plan = timed(lambda: te.plan_tag_edit(root, "rename", "red hair", "crimson hair", rels, keep=1), a.repeat)
        rows.append((f"rename: preview ({len(plan)} captions)", s))
        undo_times, apply_times = [], []
        for _ in range(a.repeat):
            s, done = timed(lambda: df.apply_caption_changes(root, plan), 1)
            apply_times.append(s)
            s, _ = timed(lambda: df.undo_caption_changes(root, done), 1)
            undo_times.append(s)
        rows.append((f"rename: apply ({len(plan)} captions written)", statistics.median(apply_times)))
        rows.append(("rename: undo", statistics.median(undo_times)))
        s, _ = timed(lambda: te.plan_tag_edit(root, "sort_count", selection=None, keep=1), a.repeat)
        rows.append((f"sort by count: preview ({a.images} captions)", s))
    page_rows = browser_steps(a.images) if a.browser else []
    load1 = os.getloadavg()[0]
    cmd = f"python bench/tag_editor.py --images {a.images}{' --browser' if a.browser else ''}"
    md = [f"# The tag editor on {a.images} tagged images", "",
          f"`{cmd}` on {time.strftime('%Y-%m-%d %H:%M:%S')}: server side, median of "
          f"{a.repeat}; 1-minute load average {load0:.1f} at the start, {load1:.1f} at the end "
          f"({os.cpu_count()} CPUs).", "", "| step | seconds |", "|---|---|",
          *(f"| {name} | {sec:.3f} |" for name, sec in rows), ""]
    if page_rows:
        md += ["In Chromium (one run each; Gradio's round trip and the page's drawing included):", "",
               "| step | seconds |", "|---|---|", *(f"| {name} | {sec:.2f} |" for name, sec in page_rows), ""]
    print("\n".join(md))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(md), encoding="utf-8")


if __name__ == "__main__":
    main()
