"""The captioner (`python -m trainer caption`): tag rules, modes, trigger word, a corrupt image, a kill mid-way,
with a tiny ONNX tagger and a tiny BLIP built here (tests/caption_models.py)."""
from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from tests.caption_models import TAGS, make_blip, make_tagger
from tests.helpers import run_in_process, run_trainer
from trainer.caption.events import CaptionView
from trainer.caption.job import compose
from trainer.caption.settings import CaptionSettings, add_arguments, from_namespace, to_argv
from trainer.caption.tagger import Tag, select_tags

pytest.importorskip("onnxruntime")  # the optional [caption] extra; scripts/install.py installs it for the tests

RED, BLUE = (230, 10, 10), (10, 10, 230)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return make_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def _dataset(root, n_red=3, n_blue=2):
    """red_i.png, blue_i.png in 2_things/, one already captioned, and a corrupt broken.png."""
    sub = root / "2_things"
    sub.mkdir(parents=True)
    for i in range(n_red):
        Image.new("RGB", (40, 24), RED).save(sub / f"red_{i}.png")
    for i in range(n_blue):
        Image.new("RGBA", (20, 30), BLUE + (255,)).save(sub / f"blue_{i}.png")
    (sub / "blue_0.txt").write_text("my own caption, blue\n", encoding="utf-8")
    (sub / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return root


def _captions(root):
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.txt"))}


def _events(job):
    return [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]


def test_tag_rules():
    tags = [Tag(n, c) for n, c, *_ in TAGS]
    probs = np.array([0.5, 0.12, 0.98, 0.88, 0.02, 0.73, 0.95, 0.38], dtype=np.float32)
    s = CaptionSettings()
    # general over 0.35 by confidence, underscores → spaces, kaomoji kept, no rating, character under 0.85 out
    assert select_tags(probs, tags, s) == ["long hair", "watermark", "^_^", "solo"]
    s = CaptionSettings(general_threshold=0.9, character_threshold=0.7, rating_tags=True,
                        blacklist="Long Hair,  other", keep_underscores=True)
    # the likeliest rating only; the character now in; the blacklist matches whatever the case and underscores
    assert select_tags(probs, tags, s) == ["watermark", "hatsune_miku", "general"]
    with pytest.raises(ValueError, match="8 scores but selected_tags.csv lists 3"):
        select_tags(probs, tags[:3], s)


def test_compose_modes_and_trigger():
    tags = CaptionSettings(trigger="zq")
    assert compose("old, tags", "a, zq, b", tags) == "zq, a, b"  # overwrite; the trigger first, once
    append = CaptionSettings(trigger="zq", mode="append")
    assert compose("zq, old, a", "a, new", append) == "zq, old, a, new"  # each tag once, the old ones first
    nat = CaptionSettings(backend="natural", trigger="zq", mode="append")
    assert compose("A photo.", "a red square", nat) == "zq, A photo. a red square"
    assert compose("zq, A photo", "a red square", nat) == "zq, A photo. a red square"
    assert compose("", "a cat", CaptionSettings(backend="natural")) == "a cat"


def test_settings_flags_round_trip():
    import argparse

    s = CaptionSettings(backend="natural", model="/m", images="all", mode="append", trigger="zq x",
                        general_threshold=0.5, blacklist="a, b", rating_tags=True, caption_length="long")
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    assert from_namespace(ap.parse_args(to_argv(s))) == s
    with pytest.raises(ValueError, match="General tag threshold"):
        from_namespace(ap.parse_args(["--general-threshold=1.5"]))


def test_tagger_process_captions_missing_and_names_the_corrupt_image(tmp_path, tagger):
    ds, job = _dataset(tmp_path / "ds"), tmp_path / "job"
    r = run_trainer("caption", str(ds), f"--job-dir={job}", f"--model={tagger}", "--images=missing",
                    "--trigger=zq", timeout=300)
    assert r.returncode == 0, r.stderr
    caps = _captions(ds)
    assert caps["2_things/blue_0.txt"] == "my own caption, blue\n"  # had a caption: not selected
    for i in range(3):
        assert caps[f"2_things/red_{i}.txt"] == "zq, long hair, watermark, ^_^, solo\n"
    assert caps["2_things/blue_1.txt"] == "zq, blue sky, watermark, ^_^, solo\n"
    assert "2_things/broken.txt" not in caps
    evs = _events(job)
    assert [e["type"] for e in evs][0] == "started" and evs[0]["total"] == 5
    errors = [e for e in evs if e["type"] == "error"]
    assert [e["file"] for e in errors] == ["2_things/broken.png"] and errors[0]["message"]
    assert [e["done"] for e in evs if e["type"] == "progress"] == [1, 2, 3, 4, 5]
    assert evs[-1]["type"] == "finished" and evs[-1]["status"] == "finished"
    assert (evs[-1]["written"], evs[-1]["failed"]) == (4, 1)
    view = CaptionView(job).update()
    assert (view.state, view.done, view.total, view.written) == ("finished", 5, 5, 4)
    assert view.errors[0].startswith("2_things/broken.png: ")


def test_modes_skip_append_overwrite_and_selection(tmp_path, tagger):
    ds = _dataset(tmp_path / "ds", n_red=2, n_blue=2)
    (ds / "2_things" / "broken.png").unlink()
    (ds / "2_things" / "red_0.caption").write_text("painted, red", encoding="utf-8")  # the sidecar it has
    base = ["caption", str(ds), f"--model={tagger}", "--images=all"]
    assert run_in_process(*base, "--mode=skip").returncode == 0
    caps = _captions(ds)
    assert caps["2_things/blue_0.txt"] == "my own caption, blue\n"
    assert (ds / "2_things" / "red_0.caption").read_text() == "painted, red"
    assert "2_things/red_0.txt" not in caps  # written into the sidecar the trainer reads, never a second one
    assert caps["2_things/red_1.txt"] == "long hair, watermark, ^_^, solo\n"

    sel = tmp_path / "pick.txt"
    sel.write_text("2_things/blue_0.png\n2_things/red_0.png\nnot/there.png\n", encoding="utf-8")
    job = tmp_path / "job"
    r = run_in_process(*base, "--mode=append", "--images=selection", f"--selection-file={sel}", "--trigger=zq",
                       "--blacklist=watermark,solo", f"--job-dir={job}")
    assert r.returncode == 0
    assert (ds / "2_things" / "blue_0.txt").read_text() == "zq, my own caption, blue, blue sky, ^_^\n"
    assert (ds / "2_things" / "red_0.caption").read_text() == "zq, painted, red, long hair, ^_^\n"
    assert (ds / "2_things" / "red_1.txt").read_text() == "long hair, watermark, ^_^, solo\n"  # not selected
    assert [e["file"] for e in _events(job) if e["type"] == "error"] == ["not/there.png"]

    assert run_in_process(*base, "--mode=overwrite", "--general-threshold=0.9").returncode == 0
    assert (ds / "2_things" / "blue_0.txt").read_text() == "blue sky, watermark\n"


def test_killed_mid_way_every_caption_is_old_or_new(tmp_path, tagger):
    ds = _dataset(tmp_path / "ds", n_red=3, n_blue=2)
    for p in (ds / "2_things").glob("*.png"):
        p.with_suffix(".txt").write_text(f"old caption of {p.stem}\n", encoding="utf-8")
    old = _captions(ds)
    done = shutil.copytree(ds, tmp_path / "complete")
    args = [f"--model={tagger}", "--images=all", "--trigger=zq"]
    assert run_trainer("caption", str(done), *args, timeout=300).returncode == 0
    new = _captions(done)
    # killed (SIGKILL) with the fourth image's new caption (red_0's: blue_0, blue_1, broken.png come first)
    # written to its temp file, not yet renamed into place
    r = run_trainer("caption", str(ds), *args, env={"ATELIER_FAULT": "caption-rename@3"}, timeout=300)
    assert r.returncode == -signal.SIGKILL
    now = _captions(ds)
    assert set(now) == set(old)
    states = ["new" if now[k] == new[k] != old[k] else "old" if now[k] == old[k] else "torn" for k in sorted(now)]
    assert "torn" not in states
    order = sorted(k for k in now if k != "2_things/broken.txt")  # the listing's order: by name
    assert [now[k] == new[k] for k in order] == [True, True, False, False, False]  # blue_0, blue_1 done; red_0 killed
    assert [p.name for p in (ds / "2_things").glob(".red_0.txt.*.tmp")]  # its new caption was written, not renamed
    assert run_trainer("caption", str(ds), *args, timeout=300).returncode == 0  # a rerun finishes the job
    assert _captions(ds) == new


def test_blip_natural_captions(tmp_path):
    model = make_blip(tmp_path / "blip")
    ds = tmp_path / "ds"
    ds.mkdir()
    Image.new("RGB", (40, 30), RED).save(ds / "a.png")
    (ds / "b.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)  # corrupt
    job = tmp_path / "job"
    r = run_in_process("caption", str(ds), "--backend=natural", f"--model={model}", "--trigger=zq",
                       "--caption-length=short", f"--job-dir={job}")
    assert r.returncode == 0, r.stderr
    text = (ds / "a.txt").read_text(encoding="utf-8").strip()
    words = text.removeprefix("zq").strip(", ").split()
    assert text.startswith("zq") and set(words) <= set((model / "vocab.txt").read_text().split())
    assert [e["file"] for e in _events(job) if e["type"] == "error"] == ["b.jpg"]


def test_no_model_offline_names_the_field_and_how_to_add_one(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for backend, model in (("natural", ""), ("tags", "SmilingWolf/wd-vit-tagger-v3"), ("tags", str(tmp_path))):
        job = tmp_path / f"job-{backend}-{len(model)}"
        r = run_in_process("caption", str(tmp_path / "ds"), f"--backend={backend}", f"--model={model}",
                           f"--job-dir={job}")
        assert r.returncode == 2
        err = [e for e in _events(job) if e["type"] == "error"][0]["message"]
        assert "Captioner model (--model)" in err and "--local-dir" in err
        assert ("selected_tags.csv" in err) == (backend == "tags")
        assert _events(job)[-1]["status"] == "failed"


def test_sigterm_stops_after_the_image_it_is_on(tmp_path, tagger):
    ds, job = _dataset(tmp_path / "ds", n_red=3, n_blue=0), tmp_path / "job"
    (ds / "2_things" / "broken.png").unlink()
    # the studio's Stop is a SIGTERM to the process group; here it arrives while red_1 is captioned
    r = run_trainer("caption", str(ds), f"--model={tagger}", "--images=all", f"--job-dir={job}",
                    env={"ATELIER_FAULT": "caption-sigterm@1"}, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr  # EXIT_STOPPED
    caps = _captions(ds)
    assert sorted(caps) == ["2_things/blue_0.txt", "2_things/red_0.txt", "2_things/red_1.txt"]  # not red_2
    assert caps["2_things/red_1.txt"] == "long hair, watermark, ^_^, solo\n"  # the image it was on: whole
    last = _events(job)[-1]
    assert (last["type"], last["status"], last["done"], last["total"]) == ("finished", "stopped", 2, 3)
    # run again into the same job folder (the CLI appends to its events): the view counts the new job only
    assert run_in_process("caption", str(ds), f"--model={tagger}", f"--job-dir={job}").returncode == 0
    view = CaptionView(job).update()
    assert (view.state, view.done, view.total, view.written, view.file) == ("finished", 1, 1, 1, "2_things/red_2.png")


def test_a_hub_download_reports_its_size_and_progress_to_the_studio(tmp_path):
    """The bars snapshot_download makes with our class (huggingface_hub 2.x: one for bytes received, whose
    total is a guess, and one for bytes written, whose total grows by each file's size) become `download`
    events; the studio's panel shows the model's size and how much is here."""
    import io

    from trainer.caption.events import CaptionEventWriter
    from trainer.caption.source import download_progress
    from ui.panel_captioner import progress_html

    events = CaptionEventWriter(tmp_path / "job")
    bar_class = download_progress("org/tagger", events.emit, every_s=0)
    kw = dict(total=0, initial=0, unit="B", unit_scale=True, file=io.StringIO())
    received = bar_class(desc="Downloading bytes", **kw)
    written = bar_class(desc="Reconstructing (incomplete total...)", **kw)
    for size in (300_000_000, 78_000_000):  # two files' sizes become known
        written.total += size
    received.update(5_000_000)  # no event from the guessing bar
    written.update(150_000_000)
    view = CaptionView(tmp_path / "job").update()
    assert view.state == "running" and view.download["done"] == 150_000_000
    assert view.download["total"] == 378_000_000 and view.download["model"] == "org/tagger"
    assert "downloading org/tagger: 150 MB of 378 MB" in progress_html("running", view, "")
    written.update(228_000_000)
    assert CaptionView(tmp_path / "job").update().download["done"] == 378_000_000
    events.emit("started", total=3, backend="tags", model="org/tagger", mode="overwrite", images="all")
    view = CaptionView(tmp_path / "job").update()
    assert view.download is None and "0/3" in progress_html("running", view, "")
