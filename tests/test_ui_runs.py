"""ui/runs.py and the Train tab's helpers, called directly (no Gradio events): refusals that say what to do,
form errors that name the field by its label, an estimate that says its epochs once and counts previews,
and a studio that builds its page without importing torch."""
from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from tests.helpers import REPO
from trainer.config import ConfigError, TrainConfig, load_preset
from trainer.run.events import EventWriter, pending_requests
from ui import runs
from ui.workspace import Studio


def test_building_the_studio_page_does_not_import_torch(tmp_path):
    code = ("import sys; from ui.workspace import Studio; from ui.page import build_app; "
            f"build_app(Studio.create({str(tmp_path)!r})); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def studio(tmp_path):
    st = Studio.create(tmp_path / "data")
    ds = st.dirs.dataset_dir("cats") / "3_cat"
    ds.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (32, 32), (80 * i, 20, 200)).save(ds / f"{i}.png")
    Image.new("RGB", (32, 32)).save(st.dirs.dataset_dir("cats") / "loose.png")
    st.dirs.dataset_dir("empty").mkdir()
    return st


def test_datasets_user_and_bundled_and_a_preset_names_its_own(studio):
    values = [v for _, v in runs.dataset_choices(studio)]
    assert "cats" in values and "empty" in values and "datasets/zkq-stripes" in values
    assert runs.count_images(studio, "cats", 2) == (3, 2 * 3 + 1 * 2)  # 3_cat repeats 3, the loose image 2
    assert runs.count_images(studio, "empty") == (0, 0)
    assert runs.count_images(studio, "datasets/zkq-stripes")[0] > 0
    assert runs.preset_dataset(load_preset("demo")) == "datasets/zkq-stripes"
    assert runs.preset_dataset(load_preset("tiny-test")) is None
    for bad in ("../etc", "datasets/../../etc", ""):
        with pytest.raises(runs.RunRefused, match="Dataset"):
            runs.dataset_folder(studio, bad)


def test_refusals_say_what_to_do(studio):
    cfg = load_preset("tiny-test")
    with pytest.raises(runs.RunRefused, match="no images"):
        runs.start_new(studio, cfg, "r", "empty")
    assert studio.store.list() == []  # nothing half-made

    # a finished run (as its events say) resumes only to a larger total of steps
    rid = studio.store.new_id("done")
    folder = studio.run_dir(rid)
    folder.mkdir(parents=True)
    from trainer.config import save_config
    save_config(cfg, folder / "config.toml")
    studio.store.add(rid, "done", "tiny:sd1", "tiny-test", folder)
    w = EventWriter(folder)
    w.emit("started", max_steps=20, family="tiny", device="cpu", dtype="float32", images=2, resumed_from=0,
           trainable_params=1, startup_s=0.1)
    w.emit("finished", status="finished", step=20, adapter="output/x.safetensors")
    for steps in (None, 20, 5):
        with pytest.raises(runs.RunRefused, match="above 20"):
            runs.resume(studio, rid, steps)
    with pytest.raises(runs.RunRefused, match="not training"):
        runs.ask(studio, rid, "sample_now")
    assert pending_requests(folder) == []
    with pytest.raises(runs.RunRefused, match="not running"):
        runs.stop(studio, rid)
    summary = runs.summaries(studio)[0]
    assert (summary.state, summary.step, summary.dataset) == ("finished", 20, "")
    assert runs.delete(studio, rid).startswith("Deleted") and not folder.exists() and not studio.store.list()


def test_form_errors_name_the_field_by_its_label():
    from ui.form import labels, values_to_config
    keys = ["schedule.max_train_steps", "network.rank"]
    with pytest.raises(ConfigError) as e:
        values_to_config(keys, [0, 4])
    assert str(e.value) == "Training steps: must be at least 1"
    assert labels()["schedule.max_train_steps"] == "Training steps"
    with pytest.raises(ConfigError, match="Training steps: is empty"):
        values_to_config(keys, [None, 4])
    # a check across fields names them by label too
    with pytest.raises(ConfigError, match=r"Min timestep.*\(noise.min_timestep\)"):
        values_to_config(["noise.min_timestep", "noise.max_timestep"], [500, 100])


def test_estimate_says_epochs_once_counts_previews_and_warns_on_no_images():
    from ui.tab_train import estimate_text
    cfg = load_preset("demo")
    text = estimate_text(cfg, 10, 10, "zkq")
    assert text.count("epoch") == 2  # "image views per epoch" and the one "(N epochs)"
    # 10 images + as many regularisation images per epoch, batch 8: 3 batches, 300 steps → 100 epochs
    assert "(100 epochs)" in text
    # 4 prompts × (start, steps 100, 200, end): a fresh adapter equals the base, so the start is drawn once
    assert "previews ≈" in text and "16 previews" in text
    empty = estimate_text(cfg, 0, 0, "nothing")
    assert "No images" in empty and "epoch" not in empty and "nothing" in empty


def test_the_default_config_round_trips_through_the_form():
    from ui.form import config_to_values, values_to_config
    from trainer.config import iter_fields
    keys = [f"{s}.{k}" for s, k, _, _ in iter_fields() if f"{s}.{k}" not in ("model.base", "dataset.path")]
    cfg = TrainConfig()
    assert values_to_config(keys, config_to_values(cfg, keys)) == cfg


FAKE_TRAINER = """#!{python}
# stands in for `python -m trainer train CONFIG`: ignores SIGTERM; "{mode}"
import json, os, signal, sys, time
from pathlib import Path
run = Path(next(a for a in sys.argv[1:] if a.endswith(".toml"))).parent  # options may follow it
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def emit(**ev):
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "time": time.time(), **ev}}) + "\\n")
emit(type="started", max_steps=10)
while not any((run / "control").glob("*-stop.json")):
    time.sleep(0.1)
if "{mode}" == "saving":  # a slow save that keeps writing: 4 s, longer than both graces
    for _ in range(8):
        emit(type="phase", phase="saving", done=0, total=0)
        time.sleep(0.5)
    emit(type="finished", status="stopped", step=1)
    sys.exit(3)
time.sleep(600)  # hung
"""


@pytest.mark.parametrize("mode", ["saving", "hung"])
def test_stop_escalates_only_on_a_silent_trainer(tmp_path, mode):
    """A trainer that keeps writing while it stops is given the time it needs; a silent one is killed."""
    import time
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable, mode=mode))
    fake.chmod(0o755)
    st = Studio.create(tmp_path / "data", python=str(fake))
    st.runner.stop_grace_s = st.runner.term_grace_s = 1.0
    rid = st.store.new_id(mode)
    folder = st.run_dir(rid)
    from trainer.config import save_config
    save_config(load_preset("tiny-test"), folder / "config.toml")
    st.store.add(rid, mode, "tiny:sd1", "tiny-test", folder)
    st.runner.start(rid)
    deadline = time.monotonic() + 60
    while runs.resolve_state(folder)["state"] != "running" or not (folder / "events.jsonl").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    st.runner.stop(rid, wait=True)
    deadline = time.monotonic() + 60
    while "exit_code" not in (info := st.runner.refresh(rid)):
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
    if mode == "saving":
        assert (info["state"], info["exit_code"]) == ("stopped", 3), info
    else:
        assert info["state"] == "stopped" and info["exit_code"] == -9, info
        assert any("killed" in w for w in info["warnings"])
