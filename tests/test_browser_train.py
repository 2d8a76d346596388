"""The Train and Runs tabs in a real Chromium against a real server and real trainer processes (tiny model):
Sample now / Save now taken once per press, a finished run resumed only to train more, an estimate that
agrees with itself, form errors that name the field and stay, labels that follow the run (issue #12
defects 3, 6, 8, 11; issue #13's control requests), and the newcomer's paths (Try the demo, Runs rows)."""
import re
import time

import pytest
from PIL import Image

from tests.browser.studio_server import (CHROMIUM_ARGS, choose, doc_screen, loss_curves, open_page, open_tab,
                                         progress, set_number, Shots, studio_server, wait_progress, wait_ready,
                                         wait_until)

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    imgs = root / "upload"
    imgs.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 120, 200 - 40 * i)).save(imgs / f"cat{i}.png")
        (imgs / f"cat{i}.txt").write_text("a photo of a sks cat")
    with studio_server(data) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield dict(url=url, root=root, data=data, imgs=imgs, browser=browser)
        browser.close()


def new_page(world):
    """A fresh page once the module's last run has let go of the device: a run whose process is still exiting
    after its "finished" event is re-attached by the page load, whose reply then fills the form with that
    run's settings, over what a test has just typed (a fresh-clone run hit it)."""
    from trainer.run.device import active_run

    wait_until(lambda: active_run(world["data"]) is None, "the previous run let go of the device", 120)
    return open_page(world)


def text_of(page, elem_id: str) -> str:
    loc = page.locator(f"#{elem_id}")
    return loc.first.inner_text() if loc.count() else ""


def wait_text(page, elem_id: str, pred, timeout: float = 300, what: str = "") -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = text_of(page, elem_id)
        if pred(t):
            return t
        page.wait_for_timeout(400)
    raise AssertionError(f"#{elem_id} never {what}: {text_of(page, elem_id)!r}; status: {text_of(page, 'train-status')!r}")


def upload_cats(page, world):
    if not (world["data"] / "datasets" / "my-dataset").exists():
        page.locator("#ds-upload input[type=file]").set_input_files([str(p) for p in sorted(world["imgs"].iterdir())])
        page.locator("#ds-import-report").get_by_text("Added").wait_for(timeout=120_000)
    open_tab(page, "Train")
    choose(page, "train-dataset", "my-dataset")
    choose(page, "train-preset", "tiny-test")
    page.wait_for_function("document.querySelector('#train-base input').value.includes('Tiny')", timeout=60_000)


def name_run(page, name):
    box = page.locator("#train-run-name textarea, #train-run-name input").first
    box.fill(name)
    box.press("Tab")


def adapter_steps(page) -> list[int]:
    """Steps of the adapter previews the gallery shows (captions "step N · adapter · …")."""
    return sorted({int(m) for m in re.findall(r"step (\d+) · adapter", text_of(page, "train-previews"))})


def start_quiet_run(page, world, name: str, steps: int, prompts: list[str] | None = None) -> None:
    """Upload the cats, then train `steps` steps with no scheduled previews (only those asked for)."""
    upload_cats(page, world)
    name_run(page, name)
    if prompts:
        page.locator("#cfg-sampling-prompts textarea").fill("\n".join(prompts))
    set_number(page, "cfg-schedule-max_train_steps", steps)
    set_number(page, "cfg-sampling-every_n_steps", 0)
    page.locator("#cfg-sampling-at_start input").uncheck()
    page.locator("#train-start").click()


def test_sample_now_and_save_now_pressed_twice_give_two_each(world):
    page = new_page(world)
    shot = Shots(page, "train_steering")
    start_quiet_run(page, world, "steered", 100000, prompts=["a photo of a sks cat", "a sks cat on a sofa"])
    # what the trainer is doing shows before step 1 (loading, encoding images), then steps move
    wait_text(page, "train-progress-box", lambda t: "loading the base model" in t or "encoding images" in t
              or progress(page)["step"] >= 1, what="said what the trainer does")
    wait_progress(page, lambda p: p["state"] == "running" and p["step"] >= 1, what="started")
    shot("running")

    for n in (1, 2):
        page.locator("#train-sample-now").click()
        wait_text(page, "train-status", lambda t: "Preview asked for" in t, 60, "took the request")
        deadline = time.monotonic() + 300
        while len(adapter_steps(page)) < n:
            assert time.monotonic() < deadline, text_of(page, "train-previews")
            page.wait_for_timeout(500)
    steps = adapter_steps(page)
    assert len(steps) == 2 and steps[0] < steps[1]
    for n in (1, 2):
        page.locator("#train-save-now").click()
        wait_text(page, "train-saves", lambda t: t.count("step ") >= n, 300, f"listed save {n}")
    saved = [int(s) for s in re.findall(r"step (\d+)", text_of(page, "train-saves"))]
    assert len(saved) == 2 and saved[0] < saved[1]
    run_dir = next((world["data"] / "runs").glob("*steered*"))
    assert sorted(int(p.stem[-6:]) for p in (run_dir / "output").glob("steered-step*.safetensors")) == saved
    # the loss plot, first drawn before any step, draws both curves in their colours as steps arrive
    page.locator("#train-loss").scroll_into_view_if_needed()
    deadline = time.monotonic() + 60
    while not all(loss_curves(page).get(c, 0) >= 2 for c in ("#4f46e5", "#c7d2fe")):
        assert time.monotonic() < deadline, f"loss lines drawn: {loss_curves(page)}"
        page.wait_for_timeout(500)
    shot("two-previews-two-saves")

    # a reload mid-run opens on the running run, in the Train tab, without a click
    page.reload()
    page.wait_for_selector("#ds-upload")
    wait_progress(page, lambda p: p["state"] == "running", 120, "re-attached")
    # the tabs took no clicks until the load (which switched to the Train tab) had answered
    wait_ready(page)
    assert page.evaluate("""() => {
        const tabs = document.getElementById('atelier-tabs'), html = document.documentElement;
        html.classList.remove('atelier-ready'); const before = getComputedStyle(tabs).pointerEvents;
        html.classList.add('atelier-ready'); return [before, getComputedStyle(tabs).pointerEvents]; }""") == [
        "none", "auto"]
    assert page.locator("#train-progress").is_visible()
    assert "steered" in text_of(page, "train-run-label")

    # the Runs tab's step column follows the live step
    step_now = progress(page)["step"]
    open_tab(page, "Runs")
    deadline = time.monotonic() + 120
    while True:
        m = re.search(r"steered\s+running\s+(\d+)/", text_of(page, "runs-table"))
        if m and int(m.group(1)) > step_now:
            break
        assert time.monotonic() < deadline, text_of(page, "runs-table")
        page.wait_for_timeout(500)
    open_tab(page, "Train")

    page.locator("#train-stop").click()
    wait_progress(page, lambda p: p["state"] in ("stopped", "failed", "finished"), 180, "stopped")
    assert progress(page)["state"] == "stopped", text_of(page, "train-problems")
    page.wait_for_timeout(1500)
    bar = text_of(page, "train-progress-box")
    assert "ETA" not in bar and "it/s" not in bar, bar  # a stopped run has no time left
    assert "Stopping" not in text_of(page, "train-status")
    assert page.locator("#train-open-generate").is_visible()
    shot("stopped")

    # after a run: open it in Generate / Export
    page.locator("#train-open-export").click()
    page.wait_for_function("document.querySelector('#exp-run input') && "
                           "document.querySelector('#exp-run input').value.includes('steered')", timeout=60_000)
    assert page.locator("#exp-run").is_visible()
    page.context.close()


def test_a_finished_run_resumes_only_to_train_more(world):
    page = new_page(world)
    shot = Shots(page, "train_resume_finished")
    start_quiet_run(page, world, "resumer", 4)
    wait_progress(page, lambda p: p["state"] in ("finished", "failed", "stopped") and p["step"] > 0, what="ended")
    assert progress(page)["state"] == "finished", text_of(page, "train-problems")
    run_dir = next((world["data"] / "runs").glob("*resumer*"))
    assert sorted(p.name for p in (run_dir / "output").iterdir()) == ["resumer.safetensors"]  # named after the run
    first = (run_dir / "output" / "resumer.safetensors").read_bytes()

    page.locator("#train-resume").click()  # no new total: refused, nothing trained, nothing copied
    wait_text(page, "train-status", lambda t: "above 4" in t, 60, "asked for more steps")
    page.wait_for_timeout(2000)
    assert progress(page)["state"] == "finished"
    assert sorted(p.name for p in (run_dir / "output").iterdir()) == ["resumer.safetensors"]

    set_number(page, "train-more-steps", 7)
    page.locator("#train-resume").click()
    wait_progress(page, lambda p: p["state"] == "finished" and p["step"] == 7, what="trained on to 7")
    names = sorted(p.name for p in (run_dir / "output").iterdir())
    assert names == ["resumer-step000007.safetensors", "resumer.safetensors"], names
    assert (run_dir / "output" / "resumer.safetensors").read_bytes() == first
    assert progress(page)["state"] == "finished"
    shot("trained-on")
    page.context.close()


def test_form_errors_estimate_and_a_refused_start(world):
    (world["data"] / "datasets" / "empty").mkdir(exist_ok=True)  # a dataset without images
    page = new_page(world)
    shot = Shots(page, "train_form")
    upload_cats(page, world)

    # a wrong value names its field by label and stays until it is fixed
    set_number(page, "cfg-schedule-max_train_steps", 0)
    err = wait_text(page, "train-form-error", lambda t: "Training steps" in t, 60, "named the field")
    assert "schedule.max_train_steps" not in err and "at least 1" in err
    page.wait_for_timeout(4000)
    assert "Training steps" in text_of(page, "train-form-error")
    page.locator("#train-start").click()
    wait_text(page, "train-status", lambda t: "Training steps" in t, 60, "refused with the field's label")
    shot("form-error")
    set_number(page, "cfg-schedule-max_train_steps", 6)
    wait_text(page, "train-form-error", lambda t: t.strip() == "", 60, "cleared")
    wait_text(page, "train-status", lambda t: "Training steps" not in t, 60, "dropped the stale refusal")

    # the estimate says its epochs once, counts the previews, and warns on an empty dataset
    page.locator("#train-estimate-btn").click()
    est = wait_text(page, "train-estimate", lambda t: "steps" in t and "≈" in t, 60, "estimated")
    assert len(re.findall(r"\d+ epochs", est)) == 1, est
    assert "previews ≈" in est
    choose(page, "train-dataset", "empty")
    page.locator("#train-estimate-btn").click()
    est = wait_text(page, "train-estimate", lambda t: "No images" in t, 60, "warned")
    assert "epochs" not in est
    shot("estimate-empty")

    # a run that fails, then a refused start: the panel no longer shows the earlier failure
    choose(page, "train-dataset", "my-dataset")
    choose(page, "train-base", "corrupt.safetensors")
    name_run(page, "broken")
    page.locator("#train-start").click()
    wait_progress(page, lambda p: p["state"] == "failed", 300, "failed")
    assert "Training failed" in text_of(page, "train-problems")
    choose(page, "train-dataset", "empty")
    page.locator("#train-start").click()
    wait_text(page, "train-status", lambda t: "Refused" in t and "no images" in t, 60, "refused")
    page.wait_for_timeout(2500)
    assert "Training failed" not in text_of(page, "train-problems")
    assert progress(page)["state"] == "idle"
    assert "broken" not in text_of(page, "train-run-label")
    shot("refused")
    page.context.close()


def test_try_the_demo_and_the_runs_tab(world):
    """Uses the runs the tests above made in this module's studio (resumer, broken)."""
    page = new_page(world)
    open_tab(page, "Train")
    page.locator("#train-demo").click()
    page.wait_for_function("document.querySelector('#train-base input').value.includes('Demo')", timeout=60_000)
    page.wait_for_function("document.querySelector('#train-dataset input').value.includes('zkq-stripes')",
                           timeout=60_000)
    assert page.locator("#train-preset input").first.input_value() == "demo"
    # the adapter is named after the run (the run name box says so): no separate output name to go stale
    assert page.locator("#train-run-name textarea, #train-run-name input").first.input_value() == "zkq-stripes"
    assert page.locator("#cfg-saving-output_name").count() == 0

    # Runs: duration, dataset and final loss per run; a row opens the run in the Train tab; delete asks
    open_tab(page, "Runs")
    page.locator("#runs-refresh").click()
    wait_text(page, "runs-table", lambda t: "resumer" in t, 60, "listed the runs")
    # the resumer row: name, state, steps, duration, dataset, final loss (and its last preview as a thumbnail)
    table = text_of(page, "runs-table")
    assert re.search(r"resumer\s+finished\s+7/7\s+\d+:\d\d\s+my-dataset\s+\d+\.\d{4}", table), table
    assert page.locator("#runs-table img").filter(visible=True).count() >= 1
    page.locator("#runs-table").get_by_text("resumer", exact=True).filter(visible=True).first.click()
    page.wait_for_function("document.querySelector('#train-run-label') && "
                           "document.querySelector('#train-run-label').innerText.includes('resumer')", timeout=60_000)
    assert page.locator("#train-progress").is_visible()  # the Train tab is showing
    # with the settings the run actually used (trained on to 7 steps), not those it was created with (4)
    page.wait_for_function("document.querySelector('#cfg-schedule-max_train_steps input').value == '7'",
                           timeout=60_000)

    # the sample browser: the steered run's previews, rows = steps, columns = prompts, moved with the keys
    open_tab(page, "Runs")
    choose(page, "runs-pick", "steered")
    grid = page.locator("#samples-grid[data-run*='-steered-']")  # not the grid of the run picked before
    grid.wait_for(timeout=60_000)
    assert grid.locator("thead th[scope=col]").count() == 2
    rows = [int(r.removeprefix("step ")) for r in grid.locator("tbody th[scope=row]").all_inner_texts()]
    assert len(rows) == 2 and rows[0] < rows[1], rows  # the two Sample now rounds, oldest first
    assert grid.locator("td.sample-cell img").count() == 4
    grid.locator("td[data-r='0'][data-c='0']").click()  # a click shows it full size with its parameters
    full = page.locator("#samples-full")
    expect(full).to_be_visible()
    assert "a photo of a sks cat" in page.locator("#samples-full-params").inner_text()
    assert f"step {rows[0]} · prompt 1" in page.locator("#samples-full-label").inner_text()
    page.keyboard.press("ArrowRight")  # next prompt, same step; the open view follows
    expect(page.locator("#samples-full-label")).to_contain_text(f"step {rows[0]} · prompt 2")
    assert "a sks cat on a sofa" in page.locator("#samples-full-params").inner_text()
    page.keyboard.press("ArrowDown")  # next step, same prompt
    expect(page.locator("#samples-full-label")).to_contain_text(f"step {rows[1]} · prompt 2")
    assert grid.locator("td.sel").get_attribute("data-step") == str(rows[1])
    page.keyboard.press("ArrowDown")  # no row below the last: stays
    assert grid.locator("td.sel").get_attribute("data-step") == str(rows[1])
    page.keyboard.press("Escape")
    expect(full).to_be_hidden()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    expect(page.locator("#samples-full-label")).to_contain_text(f"step {rows[1]} · prompt 1")
    grid.scroll_into_view_if_needed()
    doc_screen(page, Shots(page, "runs_samples"), "sample-browser", "runs-samples.png")

    choose(page, "runs-pick", "broken")
    page.locator("#runs-delete").click()
    page.locator("#runs-confirm-text").get_by_text("cannot be undone").wait_for(timeout=30_000)
    assert any((world["data"] / "runs").glob("*broken*"))  # nothing deleted before the confirmation
    page.locator("#runs-delete-confirm").click()
    page.locator("#runs-msg").get_by_text("Deleted").wait_for(timeout=30_000)
    assert not any((world["data"] / "runs").glob("*broken*"))
    page.context.close()
