"""Cost as the work grows: a generated dataset of N images (default 500) through the studio and the trainer's
caches. Not a test: seconds, bytes and peak memory, with the machine's load beside them.

    python bench/large_dataset.py                       # 500 images: studio in Chromium, then caching at 100 and 500
    python bench/large_dataset.py --images 20 --cache-sizes 10,20 --label dev
    python bench/large_dataset.py --skip-browser        # the caching part alone

Writes bench/results/large_dataset.json (every run so far, newest last) and bench/results/large_dataset.md
(the newest run as tables; --out elsewhere for trial runs).

Studio: a new studio on a fresh data folder, driven by real Chromium. Each action is timed from the click
(or the file drop) until the page shows its result: the upload's import report, the doctor's report, the
thumbnails of the gallery's first page decoded by the browser (once after the upload, once after a page
reload; the visible ones: the gallery loads the others as they are scrolled to) and the last one scrolled
to, the caption editor opened from a thumbnail, Next / Previous steps, a saved caption, a bulk tool's
preview, apply and undo.

Caching: `python -m trainer train presets/tiny-test.toml --preset` on the generated folder (N images and a
first-100 subset), tiny:sd1 at 128 px with buckets (its VAE halves the side, so a latent is 4×64×64, the size
of SD1.5's at 512 px), cache to disk, stopped at step 1. From the run's events: caching seconds (first
`caching` phase event to `started`), how many progress events came and the longest gap between them; from
the dataset's .atelier-cache: bytes per image; from /proc: the trainer's peak RSS (VmHWM), polled.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser.studio_server import ACTION_TIMEOUT_MS, CHROMIUM_ARGS, studio_server  # noqa: E402

TAGS = ["portrait", "landscape", "ink", "watercolor", "red", "blue", "sky", "tree", "cat", "city", "night",
        "sunset", "sketch", "flat colors", "outdoors", "indoors", "close-up", "full body", "smile", "hat"]
DATASET = "big"
STEPS = 5  # Next presses timed (then as many Previous)


# ---- the images --------------------------------------------------------------------------------------------
def generate(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct pictures, 512–1024 px sides in varied aspect ratios, JPEG and PNG mixed; about 60 % with a
    .txt caption of a few tags. Returns every file (images, then captions)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, captions = [], []
    for i in range(n):
        w, h = rng.randrange(512, 1025, 8), rng.randrange(512, 1025, 8)
        c0 = tuple(rng.randrange(256) for _ in range(3))
        c1 = tuple(rng.randrange(256) for _ in range(3))
        ramp = Image.linear_gradient("L").resize((w, h)).rotate(rng.choice([0, 90, 180, 270]), expand=False)
        im = Image.composite(Image.new("RGB", (w, h), c0), Image.new("RGB", (w, h), c1), ramp)
        grain = Image.effect_noise((w, h), 24).convert("RGB")  # texture, so files weigh what photos do
        im = Image.blend(im, grain, 0.25)
        d = ImageDraw.Draw(im)
        for _ in range(rng.randrange(3, 9)):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            box = (x0, y0, x0 + rng.randrange(40, w // 2), y0 + rng.randrange(40, h // 2))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        d.text((10, 10), f"#{i}", fill=(0, 0, 0))  # every picture distinct, so the doctor finds no duplicates
        if i % 3 == 2:
            path = folder / f"img-{i:04d}.png"
            im.save(path, optimize=False)
        else:
            path = folder / f"img-{i:04d}.jpg"
            im.save(path, "JPEG", quality=90)
        images.append(path)
        if rng.random() < 0.6:
            cap = folder / f"img-{i:04d}.txt"
            cap.write_text(", ".join(rng.sample(TAGS, rng.randrange(2, 6))), encoding="utf-8")
            captions.append(cap)
    return images + captions


# ---- the studio in Chromium --------------------------------------------------------------------------------
class Clock:
    """Seconds of each named action; `steps` keeps the per-step list of repeated actions."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.steps: dict[str, list[float]] = {}

    def time(self, name: str, act, until, step: bool = False) -> float:
        t0 = time.monotonic()
        act()
        until()
        s = round(time.monotonic() - t0, 2)
        if step:
            self.steps.setdefault(name, []).append(s)
        else:
            self.seconds[name] = s
        print(f"  {name}: {s:.2f} s", flush=True)
        return s


def browser_part(files: list[Path], n: int, work: Path) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.test_browser_dataset import set_dataset, wait_text, wait_value

    data = work / "data"
    data.mkdir()
    clock = Clock()
    shown = min(n, _max_gallery())
    n_files = len(files)
    with studio_server(data) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        ctx.set_default_timeout(ACTION_TIMEOUT_MS * 5)  # a slow action is measured, not failed
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_selector("#ds-upload")
        set_dataset(page, DATASET)
        t_up = time.monotonic()
        clock.time("upload: import report", lambda: page.locator("#ds-upload input[type=file]").set_input_files(
            [str(p) for p in files]), lambda: wait_text(page, "ds-import-report", f"Added {n_files} file(s)", 900))
        wait_thumbs(page, shown)
        clock.seconds["upload: gallery shows its thumbnails"] = round(time.monotonic() - t_up, 2)
        wait_text(page, "ds-doctor", f"{n} image(s) will be trained", 900)
        clock.seconds["upload: doctor report"] = round(time.monotonic() - t_up, 2)
        for name in ("gallery shows its thumbnails", "doctor report"):
            print(f"  upload: {name}: {clock.seconds['upload: ' + name]:.2f} s", flush=True)

        clock.time("gallery: scroll to the last thumbnail", lambda: None, lambda: wait_last_thumb(page))
        clock.time("page reload: gallery shows its thumbnails", page.reload,
                   lambda: (page.wait_for_selector("#ds-upload"), wait_thumbs(page, shown)))
        wait_text(page, "ds-doctor", f"{n} image(s) will be trained", 900)

        rels = sorted(p.name for p in files if p.suffix != ".txt")
        start = min(shown - 1, 10)
        clock.time("open an image from its thumbnail", lambda: page.locator("#ds-gallery .thumbnail-item").nth(start)
                   .click(), lambda: wait_large(page, f"images/{rels[start]}"))
        for k in range(1, STEPS + 1):
            clock.time("next", lambda: page.locator("#ds-next").click(),
                       lambda: wait_large(page, f"images/{rels[(start + k) % n]}"), step=True)
        for k in range(STEPS - 1, STEPS - 4, -1):
            clock.time("previous", lambda: page.locator("#ds-prev").click(),
                       lambda: wait_large(page, f"images/{rels[(start + k) % n]}"), step=True)
        page.locator("#ds-caption textarea").fill("zkq, edited by the bench")
        clock.time("save a caption", lambda: page.locator("#ds-save-caption").click(),
                   lambda: wait_text(page, "ds-caption-msg", "Saved caption", 600))
        # an edit saved on the way to the next image
        page.locator("#ds-caption textarea").fill("zkq, edited then moved on")
        clock.time("next, saving the edit first", lambda: page.locator("#ds-next").click(),
                   lambda: wait_text(page, "ds-caption-msg", "Saved your edit", 600))

        page.locator("#ds-bulk").get_by_text("Bulk caption tools").first.click()
        page.locator("#ds-bulk-a textarea, #ds-bulk-a input").first.fill("zkq")
        # the caption edited above (twice, the same image) has zkq first; every other caption changes
        clock.time("bulk trigger word: preview", lambda: page.locator("#ds-bulk-preview").click(),
                   lambda: wait_text(page, "ds-bulk-msg", f"{n - 1} caption(s) would change", 600))
        clock.time("bulk trigger word: apply", lambda: page.locator("#ds-bulk-apply").click(),
                   lambda: wait_text(page, "ds-bulk-msg", f"Changed {n - 1} caption(s)", 600))
        clock.time("bulk trigger word: undo", lambda: page.locator("#ds-bulk-undo").click(),
                   lambda: wait_text(page, "ds-bulk-msg", f"restored {n - 1} caption(s)", 600))
        wait_value(page, "ds-image", f"images/{rels[(start + 3) % n]}")  # the view after undo settled
        browser.close()
    previews = data / "datasets" / DATASET / ".atelier-cache" / "previews"
    sizes = {side.name: _bytes(side) for side in previews.iterdir()} if previews.is_dir() else {}
    return {"seconds": clock.seconds, "steps": clock.steps, "gallery_thumbnails": shown,
            "preview_cache_bytes": sizes,
            "preview_cache_files": {side.name: len(list(side.glob("*.jpg"))) for side in previews.iterdir()}
            if previews.is_dir() else {}}


def _max_gallery() -> int:
    from ui.tab_dataset import MAX_GALLERY

    return MAX_GALLERY


def wait_thumbs(page, count: int) -> None:
    """Until the gallery holds `count` thumbnails and those in its visible area are decoded (the gallery loads
    the others lazily, as they are scrolled into view)."""
    page.wait_for_function(
        "(count) => { const g = document.querySelector('#ds-gallery'); if (!g) return false;"
        " const im = [...g.querySelectorAll('img')]; if (im.length != count) return false;"
        " const r = g.getBoundingClientRect();"
        " const seen = im.filter(i => { const b = i.getBoundingClientRect();"
        "   return b.bottom > r.top && b.top < r.bottom && b.width > 0; });"
        " return seen.length > 0 && seen.every(i => i.complete && i.naturalWidth > 0); }",
        arg=count, timeout=900_000, polling=250)


def wait_last_thumb(page) -> None:
    """Scroll the gallery to its last thumbnail, until that one is decoded."""
    last = page.locator("#ds-gallery img").last
    last.scroll_into_view_if_needed()
    page.wait_for_function("() => { const im = [...document.querySelectorAll('#ds-gallery img')].pop();"
                           " return im && im.complete && im.naturalWidth > 0; }", timeout=600_000, polling=100)


def wait_large(page, rel: str) -> None:
    """Until the file picker names `rel` and the large preview shows a decoded picture of it."""
    page.wait_for_function(
        "(rel) => { const e = document.querySelector('#ds-image input');"
        " const im = document.querySelector('#ds-preview img');"
        " const label = (document.querySelector('#ds-preview') || {}).innerText || '';"
        " return e && e.value === rel && im && im.complete && im.naturalWidth > 0 && label.includes(rel); }",
        arg=rel, timeout=600_000, polling=100)


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- the trainer's caches ----------------------------------------------------------------------------------
def cache_part(src: Path, n: int, work: Path) -> dict:
    """Cache the first n images of `src` (with their captions) with the trainer, stopped at step 1."""
    ds = work / f"cache-{n}"
    ds.mkdir()
    for img in sorted(p for p in src.iterdir() if p.suffix != ".txt")[:n]:
        shutil.copy2(img, ds / img.name)
        cap = img.with_suffix(".txt")
        if cap.exists():
            shutil.copy2(cap, ds / cap.name)
    run = work / f"run-{n}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    env.setdefault("OMP_NUM_THREADS", "1")
    # every image before step 1 (encoding on first use, the default, would spread it over the first epoch)
    sets = [f"dataset.path={ds}", "dataset.resolution=128", "dataset.enable_buckets=true",
            "dataset.cache_to_disk=true", "dataset.cache_on_first_use=false", "schedule.max_train_steps=2",
            "sampling.at_start=false", "sampling.every_n_steps=0"]
    cmd = [sys.executable, "-m", "trainer", "train", "presets/tiny-test.toml", "--preset", "--run-dir", str(run),
           "--quiet", *(x for s in sets for x in ("--set", s))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    hwm, step = 0, None
    while proc.poll() is None and step is None:
        hwm = max(hwm, _vm_hwm(proc.pid))
        step = next((e for e in _events(run / "events.jsonl") if e["type"] == "step"), None)
        time.sleep(0.1)
    hwm = max(hwm, _vm_hwm(proc.pid))
    proc.terminate()
    proc.wait()
    ev = _events(run / "events.jsonl")
    caching = [e for e in ev if e["type"] == "phase" and e.get("phase") == "caching"]
    started = next((e for e in ev if e["type"] == "started"), None)
    if step is None or not caching or started is None:
        tail = [e for e in ev if e["type"] in ("error", "warning", "finished")][-5:]
        raise RuntimeError(f"caching run on {n} images did not reach step 1: {tail}")
    times = [e["time"] for e in caching] + [started["time"]]
    cache_dir = ds / ".atelier-cache"
    lat, txt = _bytes(cache_dir / "latents"), _bytes(cache_dir / "text")
    n_lat = len(list((cache_dir / "latents").glob("*.safetensors")))
    n_txt = len(list((cache_dir / "text").glob("*.safetensors")))
    seconds = started["time"] - caching[0]["time"]
    return {"images": n, "caching_s": round(seconds, 2), "s_per_image": round(seconds / n, 3),
            "progress_events": len(caching), "progress_total": caching[-1].get("total"),
            "max_gap_between_progress_s": round(max(b - a for a, b in zip(times, times[1:])), 2),
            "latent_entries": n_lat, "text_entries": n_txt, "latent_bytes": lat, "text_bytes": txt,
            "cache_bytes_per_image": round((lat + txt) / n), "latent_bytes_per_entry": round(lat / max(n_lat, 1)),
            "text_bytes_per_entry": round(txt / max(n_txt, 1)), "peak_rss_bytes": hwm * 1024,
            "load_avg": os.getloadavg()}


def _vm_hwm(pid: int) -> int:
    """Peak resident set of a live process in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.endswith("}")]


# ---- the report --------------------------------------------------------------------------------------------
def markdown(r: dict, before: dict | None = None) -> str:
    """The run `r` as tables; `before`: an earlier run of the same size (its browser seconds in a second column)."""
    n = r["images"]
    out = [f"# {n} images in the studio and the trainer's caches", "",
           f"`python bench/large_dataset.py --images {n}` on {r['when']} ({r.get('commit', '')}, label "
           f"{r.get('label') or '-'}): {n} generated pictures, 512–1024 px sides, JPEG and PNG mixed, "
           f"{r['captioned']} with a .txt caption ({r['source_mb']:.0f} MB). The machine is shared (2 cores): "
           f"1-minute load average {r['load_avg_start'][0]:.1f} at the start, {r['load_avg_end'][0]:.1f} at "
           "the end.", ""]
    b = r.get("browser")
    if b:
        old = (before or {}).get("browser") or {"seconds": {}, "steps": {}}
        head = f" | before ({before['commit']}, {before['when']}, load {before['load_avg_start'][0]:.1f})" if before else ""
        out += ["## The Dataset tab in Chromium", "",
                "Seconds from the click (or the file drop) until the page shows the result.", "",
                f"| action | seconds{head} |", "|---|---|" + ("---|" if before else "")]

        def cell(v):
            return "" if not before else " | " + ("–" if v is None else
                                                 " · ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else f"{v:.2f}")
        out += [f"| {k} | {v:.2f}{cell(old['seconds'].get(k))} |" for k, v in b["seconds"].items()]
        out += [f"| {k} (each of {len(v)}) | {' · '.join(f'{x:.2f}' for x in v)}{cell(old['steps'].get(k))} |"
                for k, v in b["steps"].items()]
        out += ["", f"The gallery's first page holds {b['gallery_thumbnails']} thumbnails; Next / Previous and the "
                "file picker reach every image."]
        if b["preview_cache_bytes"]:
            out += ["", "Studio preview cache (JPEGs in the dataset's .atelier-cache/previews): " + "; ".join(
                f"{side} px: {b['preview_cache_files'].get(side, 0)} files, "
                f"{size / max(b['preview_cache_files'].get(side, 0), 1) / 1024:.0f} KiB each"
                for side, size in sorted(b["preview_cache_bytes"].items(), key=lambda kv: int(kv[0])))]
        out.append("")
    if r.get("caching"):
        out += ["## The trainer's caches (tiny:sd1 at 128 px, buckets on, cache to disk)", "",
                "| images | caching s | s per image | progress events | longest gap between them, s | "
                "disk cache per image, KiB (latent + text) | peak RSS, MiB | load |",
                "|---|---|---|---|---|---|---|---|"]
        for c in r["caching"]:
            out.append(f"| {c['images']} | {c['caching_s']:.1f} | {c['s_per_image']:.3f} | {c['progress_events']} | "
                       f"{c['max_gap_between_progress_s']:.2f} | {c['cache_bytes_per_image'] / 1024:.1f} "
                       f"({c['latent_bytes_per_entry'] / 1024:.1f} + {c['text_bytes_per_entry'] / 1024:.1f}) | "
                       f"{c['peak_rss_bytes'] / 2**20:.0f} | {c['load_avg'][0]:.1f} |")
        if len(r["caching"]) > 1:
            a, z = r["caching"][0], r["caching"][-1]
            grew = (z["peak_rss_bytes"] - a["peak_rss_bytes"]) / 2**20
            cache = (z["latent_bytes"] + z["text_bytes"] - a["latent_bytes"] - a["text_bytes"]) / 2**20
            out += ["", f"From {a['images']} to {z['images']} images the peak RSS grew {grew:.0f} MiB; the caches "
                    f"it holds in memory (as on disk) grew {cache:.0f} MiB."]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--cache-sizes", default="100,500", help="image counts to cache (each ≤ --images)")
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for large_dataset.json/.md")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="large-dataset-"))
    try:
        res: dict = {"label": a.label, "images": a.images, "when": time.strftime("%F %T"),
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                              text=True).stdout.strip(), "load_avg_start": os.getloadavg()}
        t0 = time.monotonic()
        files = generate(work / "src", a.images)
        res["generate_s"] = round(time.monotonic() - t0, 1)
        res["captioned"] = sum(p.suffix == ".txt" for p in files)
        res["source_mb"] = round(_bytes(work / "src") / 2**20, 1)
        print(f"generated {a.images} images in {res['generate_s']} s ({res['source_mb']} MB)", flush=True)
        if not a.skip_browser:
            res["browser"] = browser_part(files, a.images, work)
        if not a.skip_cache:
            res["caching"] = []
            for n in (int(x) for x in a.cache_sizes.split(",")):
                print(f"caching {n} images", flush=True)
                res["caching"].append(cache_part(work / "src", min(n, a.images), work))
                print(json.dumps(res["caching"][-1]), flush=True)
        res["load_avg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "large_dataset.json"
    old = json.loads(js.read_text()) if js.exists() else []
    js.write_text(json.dumps(old + [res], indent=1) + "\n")
    before = next((r for r in reversed(old) if r.get("label") == "before" and r["images"] == res["images"]
                   and r.get("browser")), None) if res.get("label") != "before" else None
    (out / "large_dataset.md").write_text(markdown(res, before))
    print(markdown(res, before))


if __name__ == "__main__":
    main()
