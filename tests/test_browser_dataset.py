"""The Dataset tab in a real Chromium against a real studio server: issue #12's dataset defects (1, 2, 9, 12)
and the caption editor (large view, previous/next, no lost edits, exclude/delete, bulk preview and undo)."""
from __future__ import annotations

import io
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.studio_server import (ACTION_TIMEOUT_MS, CHROMIUM_ARGS, Shots, choose, doc_screen, studio_server,
                                         wait_ready, wait_until)

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

UNICODE_NAME = "ünïcødé 猫 🐱.png"
# ATELIER_UPDATE_SCREENS=1 also writes the caption editor's screenshots to docs/screens/ (the README links them)


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
    ctx.set_default_timeout(ACTION_TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(world["url"])
    wait_loaded(page)
    return page


def wait_loaded(page) -> None:
    """Until the page's load event has filled the Dataset tab (its gallery label counts the images)."""
    page.wait_for_selector("#ds-upload")
    wait_ready(page)
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
    doctor = wait_text(page, "ds-doctor", "2 image(s)")  # the upload's chain (gallery, picker, doctor) is done
    assert "no caption" not in doctor, doctor
    choose(page, "ds-image", "latte.png")
    page.wait_for_function("document.querySelector('#ds-caption textarea').value == 'café au lait, sks'")
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
    doc_shot(page, Shots(page, "upload_report"), "refusals")
    # what was uploaded is gone from the upload cache inside the data folder, refused or not
    left = [p for p in (world["data"] / ".gradio").rglob("*") if p.is_file()]
    for name in ("truncated.jpg", "fake.png", ".hidden-cat.png"):
        assert name not in [p.name for p in left], left

    # a truncated file that reached the folder some other way: the doctor says it will be skipped
    shutil.copy(broken, dataset(world, "odd") / "images" / "copied-late.jpg")
    page.reload()
    wait_loaded(page)
    choose(page, "ds-name", "odd")
    doctor = wait_text(page, "ds-doctor", "copied-late.jpg")
    line = next(ln for ln in doctor.splitlines() if "copied-late.jpg" in ln)
    assert "truncated" in line and "skipped" in line, doctor
    page.context.close()


def artwork(path: Path, i: int) -> Path:
    """A small picture that reads as a picture in a screenshot: a coloured ground, a disc, stripes."""
    from PIL import ImageDraw
    grounds = [(236, 201, 160), (160, 200, 236), (200, 236, 170), (240, 180, 200), (210, 210, 240), (250, 230, 150)]
    im = Image.new("RGB", (384, 384), grounds[i % len(grounds)])
    d = ImageDraw.Draw(im)
    d.ellipse((70 + 10 * i, 90, 300 - 5 * i, 320), fill=(40 + 30 * i, 60, 120 + 20 * i))
    for x in range(0, 384, 48):
        d.rectangle((x, 0, x + 10, 40), fill=(250, 250, 250))
    im.save(path)
    return path


def doc_shot(page, shot: Shots, name: str) -> None:
    doc_screen(page, shot, name, f"dataset-{name}.png")


def value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()


def wait_value(page, elem_id: str, expected: str, timeout: float = 60) -> None:
    page.wait_for_function(
        "([id, v]) => { const e = document.querySelector('#' + id + ' input, #' + id + ' textarea');"
        " return e && e.value === v; }", arg=[elem_id, expected], timeout=timeout * 1000)


def test_caption_editor(world):
    """Frictions: the picked image large beside its caption, previous/next by button and key, edits never lost
    on switching, exclude/restore and delete, bulk edits previewed and undone; the picker shows pictures
    (a .tif too, which a browser cannot show itself)."""
    src = files_dir(world, "editor")
    files = [artwork(src / f"sketch-{i}.png", i) for i in range(5)]
    Image.open(files[0]).save(src / "scan.tif")
    files.append(src / "scan.tif")
    for i in (0, 1, 2):
        (src / f"sketch-{i}.txt").write_text(f"a sketch, figure {i}, ink")
    page = new_page(world)
    shot = Shots(page, "caption_editor")
    set_dataset(page, "sketchbook")
    upload(page, [*files, *sorted(src.glob("*.txt"))])
    wait_text(page, "ds-import-report", "Added 9 file(s)")
    root = dataset(world, "sketchbook")
    order = ["images/scan.tif", *(f"images/sketch-{i}.png" for i in range(5))]

    # the picker shows pictures: every thumbnail (the .tif's too) is an image the browser decoded
    page.wait_for_function("document.querySelectorAll('#ds-gallery img').length == 6", timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('#ds-gallery img')].every(i => i.complete"
                           " && i.naturalWidth > 0)", timeout=60_000)
    wait_text(page, "ds-doctor", "6 image(s) will be trained")
    doc_shot(page, shot, "upload")

    # clicking a thumbnail opens the picture large beside its caption
    page.locator("#ds-gallery .thumbnail-item").nth(2).click()
    wait_value(page, "ds-image", order[2])
    wait_value(page, "ds-caption", "a sketch, figure 1, ink")
    page.wait_for_function("(document.querySelector('#ds-preview img') || {}).naturalWidth >= 384", timeout=60_000)
    doc_shot(page, shot, "editor")

    # an unsaved edit is saved when moving on (button), and the next image opens
    page.locator("#ds-caption textarea").fill("a sketch, figure 1, ink, edited")
    page.locator("#ds-next").click()
    wait_value(page, "ds-image", order[3])
    wait_text(page, "ds-caption-msg", "Saved your edit")
    assert (root / "images/sketch-1.txt").read_text().strip() == "a sketch, figure 1, ink, edited"
    # ... and when another thumbnail is clicked
    page.locator("#ds-caption textarea").fill("a sketch, figure 2, ink, edited too")
    page.locator("#ds-gallery .thumbnail-item").nth(5).click()
    wait_value(page, "ds-image", order[5])
    wait_until(lambda: (root / "images/sketch-2.txt").read_text().strip() == "a sketch, figure 2, ink, edited too",
               "the edit saved on clicking another thumbnail")

    # keys: ← → outside text boxes, Page Up / Page Down while typing, Ctrl+Enter saves
    page.locator("#ds-caption-msg").click()
    page.keyboard.press("ArrowLeft")
    wait_value(page, "ds-image", order[4])
    page.keyboard.press("ArrowRight")
    wait_value(page, "ds-image", order[5])
    page.keyboard.press("ArrowRight")  # wraps around to the first image
    wait_value(page, "ds-image", order[0])
    page.locator("#ds-caption textarea").fill("a scanned page")
    page.locator("#ds-caption textarea").press("Control+Enter")
    wait_until(lambda: (root / "images/scan.txt").is_file(), "Ctrl+Enter saved the caption")
    assert (root / "images/scan.txt").read_text().strip() == "a scanned page"
    page.locator("#ds-caption textarea").press("PageDown")
    wait_value(page, "ds-image", order[1])

    # exclude (kept aside, not trained), restore, delete after a confirmation
    page.locator("#ds-exclude").click()
    wait_text(page, "ds-caption-msg", "Excluded")
    assert (root / ".excluded/images/sketch-0.png").is_file() and not (root / "images/sketch-0.png").exists()
    page.wait_for_function("document.querySelectorAll('#ds-gallery img').length == 5")
    wait_text(page, "ds-doctor", "1 excluded")
    page.locator("#ds-excluded").get_by_text("Excluded images").first.click()
    choose(page, "ds-excluded-pick", "images/sketch-0.png")
    page.locator("#ds-restore").click()
    wait_text(page, "ds-caption-msg", "Restored")
    assert (root / "images/sketch-0.png").is_file() and (root / "images/sketch-0.txt").is_file()
    page.wait_for_function("document.querySelectorAll('#ds-gallery img').length == 6")
    choose(page, "ds-image", "images/sketch-4.png")
    wait_value(page, "ds-caption", "")
    page.locator("#ds-delete").click()
    page.locator("#ds-delete-confirm").get_by_text("for good").first.wait_for()
    page.locator("#ds-delete-yes").click()
    wait_text(page, "ds-caption-msg", "Deleted")
    assert not (root / "images/sketch-4.png").exists()
    page.wait_for_function("document.querySelectorAll('#ds-gallery img').length == 5")

    # bulk edit: preview writes nothing, apply writes, undo puts everything back
    before = {p.name: p.read_bytes() for p in (root / "images").glob("*.txt")}
    page.locator("#ds-bulk").get_by_text("Bulk caption tools").first.click()
    page.locator("#ds-bulk-a textarea, #ds-bulk-a input").first.fill("zkq")
    page.locator("#ds-bulk-preview").click()
    wait_text(page, "ds-bulk-msg", "5 caption(s) would change")
    table = page.locator("#ds-bulk-table").inner_text()
    assert "zkq, a sketch, figure 1, ink, edited" in table and "zkq" in table, table
    assert {p.name: p.read_bytes() for p in (root / "images").glob("*.txt")} == before
    page.locator("#ds-bulk-table").scroll_into_view_if_needed()
    doc_shot(page, shot, "bulk-preview")
    page.locator("#ds-bulk-apply").click()
    wait_text(page, "ds-bulk-msg", "Changed 5 caption(s)")
    assert (root / "images/sketch-1.txt").read_text().strip() == "zkq, a sketch, figure 1, ink, edited"
    assert (root / "images/sketch-3.txt").read_text().strip() == "zkq"
    page.locator("#ds-bulk-undo").click()
    wait_text(page, "ds-bulk-msg", "restored 5 caption(s)")
    assert {p.name: p.read_bytes() for p in (root / "images").glob("*.txt")} == before
    assert not (root / "images/sketch-3.txt").exists()
    page.context.close()


COUNTS = "document.querySelector('#ds-te-counts .virtual-body').textContent"  # the tag table's shown rows


def test_tag_editor(world):
    """Issue #16's tag editor: pick 10 images by a tag in the tag table, rename the tag across them (the counts
    follow), undo it, and remove a tag chip of one image in the per-image view."""
    root = dataset(world, "tagged")
    (root / "images").mkdir(parents=True)
    for i in range(14):
        picture(root / "images" / f"pic-{i:02d}.png", (15 * i, 120, 200 - 10 * i), size=(48, 48))
        tags = "sks, red hair, smile" if i < 10 else "sks, blue eyes"
        (root / "images" / f"pic-{i:02d}.txt").write_text(tags + "\n")
    before = {p.name: p.read_bytes() for p in (root / "images").glob("*.txt")}
    page = new_page(world)
    shot = Shots(page, "tag_editor")
    choose(page, "ds-name", "tagged")
    page.locator("#ds-gallery").get_by_text("14 image(s)").first.wait_for()
    page.locator("#ds-tagedit").get_by_text("Tag editor").first.click()
    page.wait_for_function(f"{COUNTS}.includes('red hair')")

    # a tag clicked in the table picks its images
    page.locator("#ds-te-counts .virtual-body").get_by_text("red hair", exact=True).first.click()
    wait_text(page, "ds-te-selected", "10 of 14 image(s) selected")
    page.locator("#ds-te-new textarea, #ds-te-new input").first.fill("crimson hair")
    page.locator("#ds-te-preview").click()
    wait_text(page, "ds-te-msg", "10 caption(s) would change")
    assert "sks, crimson hair, smile" in page.locator("#ds-te-plan").inner_text()
    assert {p.name: p.read_bytes() for p in (root / "images").glob("*.txt")} == before  # a preview writes nothing
    page.locator("#ds-te-apply").click()
    wait_text(page, "ds-te-msg", "Changed 10 caption(s)")
    assert (root / "images/pic-03.txt").read_text().strip() == "sks, crimson hair, smile"
    wait_value(page, "ds-caption", "sks, crimson hair, smile")  # the caption editor (on pic-00) shows the file
    page.wait_for_function(f"{COUNTS}.includes('crimson hair')")
    counts = page.locator("#ds-te-counts .virtual-body").text_content()
    assert "red hair" not in counts.replace("crimson hair", ""), counts
    wait_text(page, "ds-te-selected", "10 of 14 image(s) selected")  # still picked, under the new name
    shot("renamed")

    page.locator("#ds-te-undo").click()
    wait_text(page, "ds-te-msg", "restored 10 caption(s)")
    assert {p.name: p.read_bytes() for p in (root / "images").glob("*.txt")} == before
    page.wait_for_function(f"!{COUNTS}.includes('crimson') && {COUNTS}.includes('red hair')")
    wait_text(page, "ds-te-selected", "10 of 14 image(s) selected")  # picked again under the old name

    # per-image view: the picked image's tags as chips; × removes one and saves the caption
    choose(page, "ds-te-image", "images/pic-02.png")
    page.locator("#ds-te-chips .token", has_text="smile").first.wait_for()
    page.wait_for_function("(document.querySelector('#ds-te-big img') || {}).naturalWidth > 0", timeout=60_000)
    shot("chips")
    page.locator("#ds-te-chips .token", has_text="smile").first.locator(".token-remove").click()
    wait_text(page, "ds-te-image-msg", "Saved the tags of")
    assert (root / "images/pic-02.txt").read_text().strip() == "sks, red hair"
    # chips shown before an edit elsewhere do not write the older tags back: they are reloaded
    (root / "images/pic-02.txt").write_text("sks, red hair, edited elsewhere\n")
    page.locator("#ds-te-chips .token", has_text="red hair").first.locator(".token-remove").click()
    wait_text(page, "ds-te-image-msg", "changed elsewhere")
    page.locator("#ds-te-chips .token", has_text="edited elsewhere").first.wait_for()
    assert (root / "images/pic-02.txt").read_text().strip() == "sks, red hair, edited elsewhere"
    page.context.close()

