"""Generate / compare and Export in a real Chromium against a real server, on a run trained once by the real
trainer CLI (the bundled demo base and concept, a checkpoint at step 15 and the final adapter at step 30)."""
import io
import shutil
import zipfile

import pytest
from PIL import Image

from tests.browser.studio_server import (CHROMIUM_ARGS, REPO, choose, doc_screen, open_page, open_tab, Shots,
                                         studio_server)
from tests.helpers import run_in_process, write_config

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

PROMPTS = ["a zkq pattern", "a red zkq pattern on a white background"]
# ATELIER_UPDATE_SCREENS=1 also writes the screenshots to docs/screens/ (the new user's path in the docs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from trainer.formats.safetensors_io import read_header
    from ui.store import RunStore

    root = tmp_path_factory.mktemp("genexp")
    data = root / "data"
    store = RunStore(data / "runs.sqlite")
    run_id = store.new_id("gridrun")
    run_dir = data / "runs" / run_id
    # the bundled demo: its base draws shapes, so the screenshots show pictures (a tiny random model draws noise)
    shutil.copytree(REPO / "datasets" / "zkq-stripes", run_dir / "dataset")
    # non-default preview settings, so the Generate tab's pre-fill is seen to come from this run
    cfg = write_config(run_dir, "demo", **{"dataset.path": str(run_dir / "dataset"), "dataset.reg_path": "",
                                           "dataset.batch_size": 4, "optimizer.lr": 4e-3, "schedule.warmup_steps": 0,
                                           "schedule.max_train_steps": 30, "saving.every_n_steps": 15,
                                           "sampling.every_n_steps": 0, "sampling.at_start": False,
                                           "sampling.with_base": False, "sampling.steps": 8, "sampling.guidance_scale": 5.5,
                                           "sampling.sampler": "euler", "sampling.prompts": PROMPTS,
                                           "saving.precision": "fp32"})
    r = run_in_process("train", str(cfg), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    final = run_dir / "output" / "zkq-stripes.safetensors"
    ckpt = run_dir / "output" / "zkq-stripes-step000015.safetensors"
    assert final.is_file() and ckpt.is_file()
    store.add(run_id, "gridrun", "builtin:shapes", "demo", run_dir)
    store.update(run_id, state="finished", steps=30, adapter="output/zkq-stripes.safetensors")

    # a base checkpoint in the models folder, which must not be offered as an adapter
    (data / "models").mkdir(parents=True)
    (data / "models" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    files = root / "upload"
    files.mkdir()
    shutil.copy(ckpt, files / "my-civitai-lora.safetensors")
    (files / "notes.txt").write_text("not an adapter")
    (files / "broken.safetensors").write_bytes(b"\xff" * 64)
    assert read_header(files / "my-civitai-lora.safetensors").metadata["modelspec.title"]
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield dict(url=url, data=data, run_id=run_id, run_dir=run_dir, files=files, final=final, browser=browser)
        browser.close()


def new_page(world):
    return open_page(world, downloads=True)


def grid_headers(page) -> tuple[list[str], list[str]]:
    cols = page.locator("#gen-grid-table thead th[scope=col]").all_inner_texts()
    rows = page.locator("#gen-grid-table tbody th[scope=row]").all_inner_texts()
    return [c.strip() for c in cols], [r.strip() for r in rows]


def wait_grid_images(page, n: int) -> None:
    """n images in the grid table, each served and decoded by the browser."""
    page.wait_for_function(
        f"(() => {{ const im = [...document.querySelectorAll('#gen-grid-table img')];"
        f" return im.length == {n} && im.every(i => i.complete && i.naturalWidth > 0); }})()", timeout=300_000)


def test_compare_is_a_labelled_grid_prefilled_from_the_run(world, tmp_path):
    page = new_page(world)
    shot = Shots(page, "compare_grid")
    open_tab(page, "Generate")
    choose(page, "gen-run", "gridrun")
    # the run's preview prompts, CFG and sampler are pre-filled; every saved adapter is a row
    page.wait_for_function("document.querySelector('#gen-prompt textarea').value.includes('white background')",
                           timeout=30_000)
    assert page.locator("#gen-prompt textarea").input_value().splitlines() == PROMPTS
    assert float(page.locator("#gen-cfg input[type=number]").input_value()) == 5.5
    assert page.locator("#gen-sampler input").first.input_value() == "euler"
    assert page.locator("#gen-steps input[type=number]").input_value() == "8"
    boxes = page.locator("#gen-ckpt-pick label")
    assert [t.strip() for t in boxes.all_inner_texts()] == ["step 15", "step 30 (final)"]
    assert all(page.locator("#gen-ckpt-pick input[type=checkbox]").nth(i).is_checked() for i in range(2))

    page.locator("#gen-strengths input, #gen-strengths textarea").first.fill("0,1")
    page.locator("#gen-grid").click()
    page.locator("#gen-grid-table").wait_for(timeout=300_000)
    # strength × checkpoint × prompt: 2 prompts × 2 checkpoints rows, 2 strength columns, named by step/strength
    wait_grid_images(page, 8)
    cols, rows = grid_headers(page)
    assert cols == ["strength 0.0", "strength 1.0"]
    assert rows == ["step 15", "step 30 (final)"] * 2
    heads = page.locator("#gen-grid-table .gen-prompt-head").all_inner_texts()
    assert [h.split(": ", 1)[1] for h in heads] == PROMPTS
    assert "4 row(s) × 2 strength(s), 8 image(s)" in page.locator("#gen-msg").inner_text()
    page.locator("#gen-grid").evaluate("e => e.scrollIntoView({block: 'start'})")  # button, summary and grid
    doc_screen(page, shot, "grid", "compare-grid.png")

    # the same grid as one labelled PNG, written by the trainer in the run's folder
    link = page.locator("#gen-grid-file a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as dl:
        link.click()
    grid = Image.open(dl.value.path())
    grids = list(world["run_dir"].glob("generate/*/grid.png"))
    assert len(grids) == 1 and Image.open(grids[0]).size == grid.size
    assert grid.width > 2 * 128 and grid.height > 4 * 128  # label margins around 2 × 4 cells of at least 128 px
    page.context.close()


def test_generate_with_an_uploaded_adapter_file_on_a_chosen_base(world):
    page = new_page(world)
    shot = Shots(page, "compare_file")
    # a LoRA put on the user's shelf (models folder) while the studio runs
    (world["data"] / "models" / "loras").mkdir(exist_ok=True)
    shutil.copy(world["final"], world["data"] / "models" / "loras" / "shelf-lora.safetensors")
    open_tab(page, "Generate")
    page.locator("#gen-source").get_by_text("Adapter files").click()
    page.locator("#gen-upload").wait_for(state="visible", timeout=30_000)
    # the LoRA in the models folder is offered; a (broken) base checkpoint there is not
    page.locator("#gen-adapter input").first.click()
    options = page.locator("[role=option]").all_inner_texts()
    page.keyboard.press("Escape")
    assert any("shelf-lora.safetensors" in o for o in options), options
    assert not any("corrupt" in o for o in options), options

    msg = page.locator("#gen-upload-msg")
    for name, reason in (("notes.txt", "not a .safetensors file"), ("broken.safetensors", "not a readable")):
        page.locator("#gen-upload input[type=file]").set_input_files(str(world["files"] / name))
        msg.get_by_text(name).wait_for(timeout=60_000)
        assert "Refused" in msg.inner_text() and reason in msg.inner_text(), msg.inner_text()
    page.locator("#gen-upload input[type=file]").set_input_files(str(world["files"] / "my-civitai-lora.safetensors"))
    msg.get_by_text("Added").wait_for(timeout=60_000)
    assert "my-civitai-lora.safetensors" in msg.inner_text() and "(LoRA)" in msg.inner_text()
    assert (world["data"] / "adapters" / "my-civitai-lora.safetensors").is_file()
    assert "my-civitai-lora" in page.locator("#gen-adapter").inner_text()  # picked for the grid

    choose(page, "gen-base", "Demo base")
    page.locator("#gen-prompt textarea").fill("a zkq pattern")
    page.locator("#gen-steps input[type=number]").fill("8")
    page.locator("#gen-strengths input, #gen-strengths textarea").first.fill("0,1")
    page.locator("#gen-grid").click()
    page.locator("#gen-grid-table").wait_for(timeout=300_000)
    wait_grid_images(page, 2)
    cols, rows = grid_headers(page)
    assert cols == ["strength 0.0", "strength 1.0"] and rows == ["my-civitai-lora.safetensors"]
    assert "builtin:shapes" in page.locator("#gen-msg").inner_text()
    assert len(list((world["data"] / "generate").glob("*/r0_p0_s*.png"))) == 2
    page.evaluate("window.scrollTo(0, 0)")
    doc_screen(page, shot, "file-grid", "compare-adapter-file.png")
    page.context.close()


def open_export(page, world):
    open_tab(page, "Export")
    choose(page, "exp-run", "gridrun")
    info = page.locator("#exp-info")
    info.get_by_text("Adapter:").wait_for(timeout=30_000)
    # the demo preset holds out images for validation: Export suggests a checkpoint (saves at 15 and 30) and says why
    expect(page.locator("#exp-suggestion")).to_contain_text("Suggested: step", timeout=30_000)
    picked = page.locator("#exp-ckpt input").first.input_value()
    assert picked.startswith("step ") and picked.endswith("· suggested"), picked
    page.get_by_text("Metadata", exact=True).first.click()  # its accordion starts closed
    # the run's current title is filled in (the edited file's, or the output name)
    expect(page.locator("#exp-title textarea, #exp-title input").first).not_to_have_value("", timeout=30_000)
    return info


def save_metadata(page, title, trigger, description):
    fields = {"exp-title": title, "exp-trigger": trigger, "exp-description": description}
    boxes = {elem_id: page.locator(f"#{elem_id} textarea, #{elem_id} input").first for elem_id in fields}
    # Choosing the run may answer twice under load (selection, then blur); a late answer refills the fields with
    # the run's own values, as it would under an artist typing fast. Fill again until the values stay put.
    for _ in range(5):
        for elem_id, value in fields.items():
            boxes[elem_id].fill(value)
        page.wait_for_timeout(2000)
        if all(boxes[e].input_value() == v for e, v in fields.items()):
            break
    for elem_id, value in fields.items():
        expect(boxes[elem_id]).to_have_value(value)
    page.locator("#exp-meta-save").click()
    page.get_by_text("Saved metadata").wait_for(timeout=120_000)


def test_export_label_names_the_edited_adapter(world):
    page = new_page(world)
    shot = Shots(page, "export_label")
    info = open_export(page, world)
    assert "Neon Stripes" not in info.inner_text()
    save_metadata(page, "Neon Stripes", "zkq neon", "Glowing diagonal stripes.")
    # the label follows the file Download now gives: the edited copy, with its new title and trigger words
    page.wait_for_function("document.querySelector('#exp-info').innerText.includes('Neon Stripes')",
                           timeout=30_000)
    text = info.inner_text()
    assert "export/zkq-stripes.safetensors" in text and "zkq neon" in text, text
    page.evaluate("window.scrollTo(0, 0)")
    doc_screen(page, shot, "edited", "export-metadata.png")
    page.context.close()


def test_civitai_bundle_readme_uses_the_edited_metadata(world, tmp_path):
    from trainer.formats.safetensors_io import read_header

    page = new_page(world)
    shot = Shots(page, "export_bundle")
    open_export(page, world)
    save_metadata(page, "Bold Diagonal Stripes", "zkq bold stripes", "Diagonal zkq stripes on the bundled shapes base.")
    page.locator("#exp-bundle").click()
    page.locator("#exp-files").get_by_text("civitai").wait_for(timeout=120_000)
    link = page.locator("#exp-files a").first
    with page.expect_download() as dl:
        link.click()
    bundle = tmp_path / dl.value.suggested_filename
    dl.value.save_as(bundle)
    with zipfile.ZipFile(bundle) as z:
        readme = z.read("README.md").decode()
        inner = tmp_path / "inner.safetensors"
        inner.write_bytes(z.read("zkq-stripes.safetensors"))
        previews = [n for n in z.namelist() if n.startswith("previews/")]
        assert previews and Image.open(io.BytesIO(z.read(previews[0]))).text["parameters"]
    meta = read_header(inner).metadata
    assert meta["modelspec.title"] == "Bold Diagonal Stripes"  # the adapter carries the edit …
    # … and so does the card beside it
    assert readme.startswith("# Bold Diagonal Stripes\n"), readme[:200]
    assert "**Trigger words:** zkq bold stripes" in readme
    assert "Diagonal zkq stripes on the bundled shapes base." in readme
    page.evaluate("window.scrollTo(0, 0)")
    doc_screen(page, shot, "bundle", "export-bundle.png")
    page.context.close()
