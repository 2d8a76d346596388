"""The Dataset tab in a real Chromium against a real studio server: issue #12's dataset defects (1, 2, 9, 12)
and the caption editor (large view, previous/next, no lost edits, exclude/delete, bulk preview and undo)."""
from __future__ import annotations

import io
import os
import re
import shutil
import time
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.studio_server import CHROMIUM_ARGS, REPO, Shots, choose, studio_server

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

UNICODE_NAME = "ünïcødé 猫 🐱.png"
# ATELIER_UPDATE_SCREENS=1 also writes the caption editor's screenshots to docs/screens/ (the README links them)
DOC_SCREENS = REPO / "docs" / "screens" if os.environ.get("ATELIER_UPDATE_SCREENS") else None


def picture(path: Path, color=(200, 80, 40), size=(96, 96), fmt: str | None = None) -> Path:
    im = Image.new("RGB", size, color)
    for x in range(0, size[0], 12):  # stripes, so thumbnails are more than a flat colour
        im.paste((255 - color[0], 255 - color[1], 255 - color[2]), (x, 0, x + 4, size[1]))
    im.save(path, fmt)
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, "JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset_tab")
    data = root / "data"
    data.mkdir()
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield dict(url=url, root=root, data=data, browser=browser)
        browser.close()


def new_page(world):
    ctx = world["browser"].new_context(viewport={"width": 1440, "height": 900})
    page = ctx.new_page()
    page.goto(world["url"])
    wait_loaded(page)
    return page


def wait_loaded(page) -> None:
    """Until the page's load event has filled the Dataset tab (its gallery label counts the images)."""
    page.wait_for_selector("#ds-upload")
    page.wait_for_function("(document.querySelector('#ds-gallery') || {}).innerText?.includes('image(s)')",
                           timeout=60_000)


def files_dir(world, name: str) -> Path:
    d = world["root"] / "files" / name
    d.mkdir(parents=True)
    return d


def dataset(world, name: str) -> Path:
    return world["data"] / "datasets" / name


def set_dataset(page, name: str) -> None:
    """Type a (new) dataset name into the Dataset box."""
    box = page.locator("#ds-name input").first
    box.fill(name)
    box.press("Enter")
    page.wait_for_function(f"document.querySelector('#ds-name input').value == {name!r}")


def upload(page, paths: list[Path]) -> None:
    page.locator("#ds-upload input[type=file]").set_input_files([str(p) for p in paths])


def wait_until(pred, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.3)


def wait_text(page, elem_id: str, text: str, timeout: float = 60) -> str:
    page.locator(f"#{elem_id}").get_by_text(text).first.wait_for(timeout=timeout * 1000)
    return page.locator(f"#{elem_id}").inner_text()


def dropdown_options(page, elem_id: str) -> list[str]:
    page.locator(f"#{elem_id} input").first.click()
    page.locator("[role=option]").first.wait_for(timeout=10_000)
    opts = page.locator("[role=option]").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    page.keyboard.press("Escape")
    return opts


def test_datasets_are_listed_after_each_upload_and_after_a_reload(world):
    """Defect 1: datasets made after the server started vanished from the picker after a reload."""
    src = files_dir(world, "reload")
    cat = picture(src / "cat.png")
    page = new_page(world)
    for name in ("reload-cats", "reload-dogs"):
        set_dataset(page, name)
        upload(page, [cat])
        wait_until(lambda: (dataset(world, name) / "images" / "cat.png").exists(), f"cat.png stored in {name}")
        wait_text(page, "ds-import-report", "Added 1 file(s)")
    assert {"reload-cats", "reload-dogs"} <= set(dropdown_options(page, "ds-name"))

    page.reload()
    wait_loaded(page)
    # the page opens on an existing dataset (the one changed last), not on an empty made-up name
    page.wait_for_function("document.querySelector('#ds-name input').value == 'reload-dogs'", timeout=60_000)
    assert {"reload-cats", "reload-dogs"} <= set(dropdown_options(page, "ds-name"))
    page.context.close()


def test_doctor_and_report_follow_the_selected_dataset(world):
    """Defect 2: switching datasets kept the previous dataset's doctor and import report; an existing dataset
    never got a doctor."""
    src = files_dir(world, "doctor")
    a = [picture(src / f"a{i}.png", (40 * i, 90, 160)) for i in range(2)]
    b = [picture(src / f"b{i}.png", (90, 40 * i, 60)) for i in range(3)]
    page = new_page(world)
    set_dataset(page, "doc-a")
    upload(page, a)
    wait_text(page, "ds-import-report", "Added 2 file(s)")
    wait_text(page, "ds-doctor", "2 image(s)")
    set_dataset(page, "doc-b")
    # doc-a's upload report and doctor are not doc-b's
    page.wait_for_function("!document.querySelector('#ds-import-report').innerText.includes('Added 2 file(s)')"
                           " && !document.querySelector('#ds-doctor').innerText.includes('2 image(s)')")
    upload(page, b)
    wait_text(page, "ds-import-report", "Added 3 file(s)")
    wait_text(page, "ds-doctor", "3 image(s)")

    choose(page, "ds-name", "doc-a")
    wait_text(page, "ds-doctor", "2 image(s)")
    assert "3 image(s)" not in page.locator("#ds-doctor").inner_text()
    assert "Added 3 file(s)" not in page.locator("#ds-import-report").inner_text()

    page.reload()
    wait_loaded(page)
    choose(page, "ds-name", "doc-b")
    wait_text(page, "ds-doctor", "3 image(s)")  # an existing dataset gets its doctor without any upload
    page.context.close()


def test_utf16_and_windows_1252_captions_are_converted_not_refused(world):
    """Defect 9: captions the trainer reads (UTF-16, Windows-1252) were refused at upload."""
    src = files_dir(world, "encodings")
    files = [picture(src / "latte.png"), picture(src / "creme.png", (30, 160, 90))]
    (src / "latte.txt").write_bytes("café au lait, sks".encode("utf-16"))  # with a BOM, as Notepad writes it
    (src / "creme.txt").write_bytes("crème brûlée, sks".encode("cp1252"))
    page = new_page(world)
    set_dataset(page, "encodings")
    upload(page, [*files, src / "latte.txt", src / "creme.txt"])
    report = wait_text(page, "ds-import-report", "Added 4 file(s)")
    assert "latte.txt" in report and "UTF-16" in report and "UTF-8" in report, report
    assert "creme.txt" in report and "Windows-1252" in report, report
    images = dataset(world, "encodings") / "images"
    assert (images / "latte.txt").read_bytes().decode("utf-8").strip() == "café au lait, sks"
    assert (images / "creme.txt").read_bytes().decode("utf-8").strip() == "crème brûlée, sks"
    choose(page, "ds-image", "latte.png")
    page.wait_for_function("document.querySelector('#ds-caption textarea').value == 'café au lait, sks'")
    doctor = wait_text(page, "ds-doctor", "2 image(s)")
    assert "no caption" not in doctor, doctor
    page.context.close()


def test_upload_explains_refusals_and_renames_and_leaves_no_litter(world):
    """Defect 12: truncated images accepted, `UnidentifiedImageError` on the page, silent renames, refused
    uploads left in the upload cache inside the data folder."""
    src = files_dir(world, "odd")
    broken = truncated_jpeg(src / "truncated.jpg")
    fake = src / "fake.png"
    fake.write_bytes(b"MZ\x90\x00 a program, not a picture")
    uni = picture(src / UNICODE_NAME, (20, 20, 200))
    hidden = picture(src / ".hidden-cat.png", (200, 200, 20))
    page = new_page(world)
    set_dataset(page, "odd")
    upload(page, [broken, fake, uni, hidden])
    report = wait_text(page, "ds-import-report", "Added 2 file(s)")
    assert "truncated.jpg" in report and "truncated" in report.split("truncated.jpg", 1)[1], report
    assert "fake.png: not a readable image" in report, report
    assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", report), report  # words, not exception class names
    stored = {unicodedata.normalize("NFC", p.name) for p in (dataset(world, "odd") / "images").iterdir()}
    assert UNICODE_NAME in stored, stored  # a unicode name is kept as it is
    assert "hidden-cat.png" in stored and ".hidden-cat.png" not in stored, stored  # hidden files are not trained
    assert ".hidden-cat.png" in report and "renamed" in report and "hidden-cat.png" in report, report
    assert "truncated.jpg" not in stored and "fake.png" not in stored
    # what was uploaded is gone from the upload cache inside the data folder, refused or not
    left = [p.name for p in (world["data"] / ".gradio").rglob("*") if p.is_file()]
    for name in ("truncated.jpg", "fake.png", ".hidden-cat.png"):
        assert name not in left, left

    # a truncated file that reached the folder some other way: the doctor says it will be skipped
    shutil.copy(broken, dataset(world, "odd") / "images" / "copied-late.jpg")
    page.reload()
    wait_loaded(page)
    choose(page, "ds-name", "odd")
    doctor = wait_text(page, "ds-doctor", "copied-late.jpg")
    line = next(ln for ln in doctor.splitlines() if "copied-late.jpg" in ln)
    assert "truncated" in line and "skipped" in line, doctor
    page.context.close()
