"""The Dataset tab's Captioner without a browser: a real captioner process started the studio's way, its state
read back from the job folder alone (what a reloaded page or a restarted studio sees), its errors shown."""
from __future__ import annotations

import time

import pytest
from PIL import Image

from tests.caption_models import make_tagger
from trainer.caption.settings import validate
from ui import panel_captioner as pc
from ui.paths import UnsafePath
from ui.workspace import Studio

pytest.importorskip("onnxruntime")


def _wait(job, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, view, why = pc.job_state(job)
        if state not in ("running", "idle"):
            return state, view, why
        time.sleep(0.2)
    raise AssertionError(f"the caption job did not end within {timeout} s")


def test_start_follow_and_reattach(tmp_path):
    studio = Studio.create(tmp_path / "data")
    tagger = make_tagger(studio.dirs.models / "wd-tiny")
    ds = studio.dirs.dataset_dir("set")
    ds.mkdir()
    for i, colour in enumerate([(230, 10, 10), (10, 10, 230), (230, 10, 10)]):
        Image.new("RGB", (32, 32), colour).save(ds / f"{i}.png")
    (ds / "1.txt").write_text("mine\n")
    assert pc.found_models(studio) == [("tagger · wd-tiny", str(tagger))]
    assert pc._model_arg(studio, "wd-tiny") == str(tagger)  # relative to the models folder
    assert pc._model_arg(studio, "SmilingWolf/wd-vit-tagger-v3") == "SmilingWolf/wd-vit-tagger-v3"
    with pytest.raises(UnsafePath, match="Captioner model"):
        pc._model_arg(studio, str(tmp_path))  # a folder outside the models folders
    job = pc.job_dir(studio, "set")
    assert pc.job_state(job)[0] == "idle"

    msg = pc.start(studio, "set", validate({"model": str(tagger), "trigger": "zq"}), [])
    assert "Captioning set" in msg
    state, view, why = _wait(job)
    assert (state, view.done, view.total, view.written, why) == ("finished", 2, 2, 2, "")
    assert (ds / "0.txt").read_text() == "zq, long hair, watermark, ^_^, solo\n"
    assert (ds / "1.txt").read_text() == "mine\n"  # images without a caption only, by default
    html_ = pc.progress_html(state, view, why)
    assert 'data-state="finished"' in html_ and 'data-done="2"' in html_
    assert pc.stop(job) == "No caption job is running."

    # a reloaded page, or a studio started again: the job folder alone says what happened
    again = Studio.create(tmp_path / "data")
    state2, view2, _ = pc.job_state(pc.job_dir(again, "set"))
    assert (state2, view2.done, view2.written) == ("finished", 2, 2)

    # a selection, and a model folder that lacks its tag list: the job fails and says why
    (tagger / "selected_tags.csv").unlink()
    with pytest.raises(Exception, match="pick the images"):
        pc.start(studio, "set", validate({"model": str(tagger), "images": "selection"}), [])
    pc.start(studio, "set", validate({"model": str(tagger), "images": "selection"}), ["1.png"])
    state, view, why = _wait(job)
    assert state == "failed" and "selected_tags.csv" in why and "Captioner model" in why
    assert (job / "selection.txt").read_text() == "1.png\n"
