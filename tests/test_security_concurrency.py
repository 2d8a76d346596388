"""Two browser sessions against one server press Train within 100 ms: exactly one trainer runs on the device,
the other page says why it was refused, and the two runs never share an output file."""
from __future__ import annotations

import json
import time

import pytest
from PIL import Image

from tests.browser.studio_server import CHROMIUM_ARGS, choose, progress, set_number, studio_server, wait_progress, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright = pytest.importorskip("playwright.sync_api")


def prepare(page, url: str, run_name: str) -> None:
    page.goto(url)
    page.wait_for_selector("#ds-upload")
    wait_ready(page)
    page.get_by_role("tab", name="Train").click()
    choose(page, "train-preset", "tiny-test")
    page.wait_for_function("document.querySelector('#train-base input').value.includes('Tiny')", timeout=30_000)
    set_number(page, "cfg-schedule-max_train_steps", 5000)
    set_number(page, "cfg-sampling-every_n_steps", 0)
    page.locator("#train-run-name input, #train-run-name textarea").first.fill(run_name)
    page.locator("#train-run-name input, #train-run-name textarea").first.press("Tab")


def status_text(page, timeout: float = 120) -> str:
    box = page.locator("#train-status")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = box.inner_text().strip()
        if text.startswith(("Started", "**Refused", "Refused")):
            return text
        page.wait_for_timeout(200)
    raise AssertionError(f"no start/refusal message: {box.inner_text()!r}")


def stop_and_wait(page) -> None:
    page.locator("#train-stop").click()
    wait_progress(page, lambda p: p["state"] in ("stopped", "failed", "finished"), timeout=180, what="stopped")
    assert progress(page)["state"] == "stopped"


def test_two_sessions_press_train_together(tmp_path):
    data = tmp_path / "data"
    images = data / "datasets" / "my-dataset" / "images"
    images.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 120, 200 - 40 * i)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text("a photo of a sks cat")
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        pages = []
        for name in ("alice", "bob"):
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            prepare(page, url, name)
            pages.append(page)
        a, b = pages
        # both pages press at the same wall-clock instant (one machine, one clock), whatever the driver's latency
        at = int(time.time() * 1000) + 1500
        press = ("at => new Promise(done => setTimeout(() => { window.__pressed = Date.now(); "
                 "document.querySelector('#train-start').click(); done(); }, at - Date.now()))")
        for page in pages:
            page.evaluate(f"at => {{ window.__press = ({press})(at); }}", at)
        a.wait_for_function("window.__pressed !== undefined")
        b.wait_for_function("window.__pressed !== undefined")
        gap = abs(a.evaluate("window.__pressed") - b.evaluate("window.__pressed")) / 1000
        texts = [status_text(a), status_text(b)]
        started = [p for p, t in zip(pages, texts) if t.startswith("Started")]
        refused = [(p, t) for p, t in zip(pages, texts) if "Refused" in t]
        assert len(started) == 1 and len(refused) == 1, texts
        assert "is training on this device" in refused[0][1]
        runs = [d for d in (data / "runs").iterdir() if d.is_dir()]
        assert len(runs) == 1  # the refused press left no run folder behind
        active = json.loads((data / "active.json").read_text())
        assert active["run_id"] == runs[0].name and active["run_id"] in texts[pages.index(started[0])]
        winner, loser = started[0], refused[0][0]
        wait_progress(winner, lambda p: p["state"] == "running" and p["step"] >= 1, what="running")
        stop_and_wait(winner)

        # now the other session may train: a second run in its own folder, never the first run's files
        loser.locator("#train-start").click()
        assert status_text(loser).startswith("Started")
        wait_progress(loser, lambda p: p["state"] == "running" and p["step"] >= 1, what="running")
        stop_and_wait(loser)
        browser.close()
    runs = sorted(d for d in (data / "runs").iterdir() if d.is_dir())
    assert len(runs) == 2
    outputs = [{f.relative_to(data) for f in r.rglob("*") if f.is_file()} for r in runs]
    adapters = [sorted(r.glob("output/*.safetensors")) for r in runs]
    assert all(adapters) and adapters[0][0] != adapters[1][0]
    assert not outputs[0] & outputs[1]
    print(f"\ntwo sessions pressed Train {gap * 1000:.0f} ms apart: trainers started: 1, refused in the page: 1; "
          f"runs afterwards: {len(runs)}, shared output files: 0")
