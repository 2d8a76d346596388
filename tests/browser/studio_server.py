"""Helpers for browser tests: the real app in a subprocess on a free port, Chromium via Playwright."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
# Playwright waits 30 s for an element by default; a click whose answer idles under a second can take longer
# than that on a loaded 2-core machine (a trainer and a previews round beside the server), so every page waits 120 s
ACTION_TIMEOUT_MS = 120_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def studio_server(data_dir: Path, *extra: str, timeout: float = 120, omp_threads: str | None = "1"):
    """The studio on a free port. omp_threads: the torch threads of the studio and the trainers it starts
    ("1" for tests beside another worker; None: torch's default, as `make run` starts it)."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = omp_threads
    log = open(data_dir.parent / f"app-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--data-dir", str(data_dir), "--port", str(port),
                             *extra], cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"app did not start: {(data_dir.parent / f'app-{port}.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def http_status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


class Shots:
    """Numbered screenshots of each step in test-artifacts/<test>/."""

    def __init__(self, page, name: str):
        self.page, self.dir, self.n = page, ARTIFACTS / name, 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, label: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{label}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


# ATELIER_UPDATE_SCREENS=1: the browser tests also write the README's screenshots to docs/screens/
DOC_SCREENS = REPO / "docs" / "screens" if os.environ.get("ATELIER_UPDATE_SCREENS") else None


def doc_screen(page, shot: Shots, label: str, name: str) -> None:
    """A numbered test artifact, and with ATELIER_UPDATE_SCREENS the README's screenshot `name` (the viewport,
    as a user sees it)."""
    path = shot(label)
    if DOC_SCREENS:
        DOC_SCREENS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOC_SCREENS / name))
    assert path.is_file()


def wait_until(pred, what: str, timeout: float = 90) -> None:
    """Poll `pred` (a check of files or processes, not of the page) until it is true."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.3)


def busy_overlays(page) -> list[str]:
    """Gradio's loading covers showing on the page now: the elem_id of the component each covers, and what it
    says (a queue position, seconds waited). For the message of a click that a cover kept out."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=status-tracker]')]
        .filter(t => t.offsetParent !== null && !t.classList.contains('hide') && t.getBoundingClientRect().height > 0)
        .map(t => `${t.parentElement.closest('[id]')?.id || '?'}: ${t.innerText.replace(/\\s+/g, ' ').trim()}`)""")


def click(locator) -> None:
    """A click that, when a loading cover keeps it out until the timeout, names the covers in its error."""
    try:
        locator.click()
    except Exception as e:
        if "intercepts pointer events" not in str(e):
            raise
        raise AssertionError(f"a loading cover stayed over the element: {busy_overlays(locator.page)}") from e


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option of a Gradio dropdown."""
    box = page.locator(f"#{elem_id} input").first
    click(box)
    box.fill(option)
    page.locator("[role=option]", has_text=option).first.click()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def progress(page) -> dict:
    el = page.locator("#train-progress")
    if el.count() == 0:
        return {"state": None, "step": 0}
    return {"state": el.get_attribute("data-state"), "step": int(el.get_attribute("data-step") or 0)}


def wait_progress(page, pred, timeout: float = 300, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = progress(page)
        if pred(p):
            return p
        page.wait_for_timeout(500)
    status = page.locator("#train-status").inner_text() if page.locator("#train-status").count() else ""
    raise AssertionError(f"progress never {what}: {progress(page)}; status: {status}")


def open_page(world: dict, width: int = 1440, height: int = 900, downloads: bool = False):
    """A fresh browser context on the studio of `world` (its "browser" and "url"), the page loaded."""
    ctx = world["browser"].new_context(viewport={"width": width, "height": height}, accept_downloads=downloads)
    ctx.set_default_timeout(ACTION_TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(world["url"])
    page.wait_for_selector("#ds-upload")
    wait_ready(page)
    return page


def wait_ready(page) -> None:
    """Until the page load has answered: before, the tabs take no clicks (ui/tab_switch.py)."""
    page.wait_for_selector("html.atelier-ready", state="attached")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def loss_curves(page) -> dict[str, int]:
    """Stroke colour → number of drawn points of each line in the Train tab's loss plot (Vega's SVG)."""
    return page.evaluate("""() => {
        const out = {};
        for (const p of document.querySelectorAll('#train-loss path[aria-roledescription="line mark"]')) {
            const d = p.getAttribute('d') || '', stroke = p.getAttribute('stroke');
            if (stroke && stroke !== 'none' && stroke !== 'transparent')
                out[stroke.toLowerCase()] = (out[stroke.toLowerCase()] || 0) + (d.match(/[ML]/g) || []).length;
        }
        return out; }""")
