"""The queue in a real Chromium against a real studio and real tiny trainer runs: queue runs with "Add to
queue", reorder and remove them and edit one's settings in the Runs and Train tabs, restart the studio while
a queued run trains, and see the queue go on until the runs left in it have finished."""
from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest
from PIL import Image

from tests.browser.studio_server import (CHROMIUM_ARGS, choose, open_page, open_tab, set_number, studio_server,
                                         wait_progress)
from trainer.run.store import RunStore
from ui.runner import resolve_state

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright = pytest.importorskip("playwright.sync_api")


def _by_name(store: RunStore) -> dict[str, dict]:
    return {row["name"]: row for row in store.list()}


def _wait(what: str, pred, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.5)
    return value


def _queue(page, name: str, steps: int) -> None:
    set_number(page, "cfg-schedule-max_train_steps", steps)
    page.locator("#train-run-name input, #train-run-name textarea").first.fill(name)
    page.locator("#train-enqueue").click()
    page.locator("#train-status").get_by_text("Queued run").wait_for()
    page.wait_for_function(f"document.querySelector('#train-status').innerText.includes('-{name}-')")


def _pick(page, name: str) -> None:
    page.locator("#runs-refresh").click()
    choose(page, "runs-pick", f"{name} ·")


def test_queue_three_runs_reorder_remove_and_restart_the_studio(tmp_path):
    data = tmp_path / "data"
    imgs = tmp_path / "upload"
    imgs.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 120, 200)).save(imgs / f"cat{i}.png")
    store = RunStore(data / "runs.sqlite")
    with ExitStack() as first, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        url = first.enter_context(studio_server(data))
        page = open_page({"browser": browser, "url": url}, 1500, 1100)
        page.locator("#ds-upload input[type=file]").set_input_files([str(p) for p in sorted(imgs.iterdir())])
        page.locator("#ds-import-report").get_by_text("Added").wait_for()
        open_tab(page, "Train")
        choose(page, "train-preset", "tiny-test")
        page.wait_for_function("document.querySelector('#train-base input').value.includes('Tiny')")
        set_number(page, "cfg-sampling-every_n_steps", 0)
        page.locator("#cfg-sampling-at_start input").uncheck()
        page.locator("#cfg-sampling-prompts textarea").fill("")  # previews off
        # a long run holds the device (the queue starts it at once) while three tiny ones wait behind it
        _queue(page, "long", 5000)
        # q3 is the run the studio restarts under: enough steps that even a fast machine cannot finish it
        # during the restart (~60 s of steps here at ~0.1 s each; the restart begins as soon as it starts)
        for name, steps in (("q2", 2), ("q3", 600), ("q4", 2)):
            _queue(page, name, steps)

        open_tab(page, "Runs")
        _pick(page, "q3")
        page.locator("#runs-queue-up").click()
        page.locator("#runs-msg").get_by_text("Moved").wait_for()
        _pick(page, "q4")
        page.locator("#runs-queue-remove").click()
        page.locator("#runs-msg").get_by_text("Removed").wait_for()
        table = page.locator("#runs-table")
        table.get_by_text("queued #2").wait_for()
        text = table.inner_text()
        assert text.index("q3") < text.index("q2") and "q4" not in text, text
        assert "queued #1" in text and "queued #3" not in text
        rows = _by_name(store)
        assert "q4" not in rows and [r["name"] for r in store.queued()] == ["q3", "q2"]

        # edit a queued run's settings: open it in the Train tab, change a field, save it back
        _pick(page, "q2")
        page.locator("#runs-open").click()
        page.locator("#train-run-label").get_by_text("q2", exact=True).wait_for()
        assert "queued" in page.locator("#train-run-label").inner_text()
        # the label can come with the live panel's tick before the form holds q2's settings: wait for those (the
        # run's name comes in the same reply), or their late arrival undoes the edit below
        page.wait_for_function("document.querySelector('#train-run-name input, #train-run-name textarea')"
                               ".value == 'q2'")
        set_number(page, "cfg-schedule-max_train_steps", 1)
        page.locator("#train-save-queued").click()
        page.locator("#train-status").get_by_text("Saved the settings").wait_for()
        assert "max_train_steps = 1\n" in (data / "runs" / rows["q2"]["id"] / "config.toml").read_text()

        # the user stops the long run: the queue goes on with the next
        open_tab(page, "Runs")
        _pick(page, "long")
        page.locator("#runs-open").click()
        wait_progress(page, lambda p: p["state"] == "running" and p["step"] >= 1, what="long running")
        page.locator("#train-stop").click()
        wait_progress(page, lambda p: p["state"] == "stopped", timeout=120, what="stopped")

        # restart the studio while the first queued run trains
        second = rows["q3"]["id"]
        _wait("q3 running", lambda: resolve_state(data / "runs" / second)["state"] == "running")
        page.context.close()
        first.close()  # the studio process ends; the trainer it started runs on
        assert resolve_state(data / "runs" / second)["state"] == "running"

        with studio_server(data) as url:
            page = open_page({"browser": browser, "url": url}, 1500, 1100)
            if resolve_state(data / "runs" / second)["state"] == "running":
                # the page's load re-attaches to the run training now and shows the Train tab: let it land
                # first, or it switches away from the Runs tab opened meanwhile
                page.get_by_role("tab", name="Train", selected=True).wait_for()
            open_tab(page, "Runs")
            table = page.locator("#runs-table")

            def all_finished():
                page.locator("#runs-refresh").click()
                page.wait_for_timeout(1000)
                return table.inner_text().count("finished") == 2

            _wait("both queued runs finished", all_finished, timeout=600)
            assert "stopped" in table.inner_text()
            page.context.close()
        browser.close()

    rows = _by_name(store)
    assert {n: rows[n]["state"] for n in ("long", "q2", "q3")} == {
        "long": "stopped", "q3": "finished", "q2": "finished"}
    assert rows["q2"]["steps"] == 1 and rows["q3"]["steps"] == 600  # q2 trained with its edited settings
    started = {n: json.loads((data / "runs" / rows[n]["id"] / "events.jsonl").read_text().splitlines()[0])["time"]
               for n in ("long", "q2", "q3")}
    assert started["long"] < started["q3"] < started["q2"]
    # one at a time across the restart: the new studio started q2 only once q3 (re-attached) had ended
    ended_q3 = json.loads((data / "runs" / rows["q3"]["id"] / "events.jsonl").read_text().splitlines()[-1])
    assert ended_q3["type"] == "finished" and ended_q3["time"] < started["q2"]
    assert not list((data / "runs").glob("*-q4-*"))  # removed before it started: its folder went too
    assert not list((data / "runs").glob("*/samples/*.png"))  # previews were off
