"""The shipped demo base (builtin:shapes): an ordinary small SD folder that draws the shape and colour it is
asked for, does not know the demo concept, and is reproduced by scripts/train_demo_base.py."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from trainer.demo import evaluate, score

BASE = REPO / "trainer" / "assets" / "shapes_base"


@pytest.fixture(scope="module")
def base_pipe():
    import torch

    torch.manual_seed(0)
    return evaluate.load_pipeline(BASE)


def test_shipped_base_is_an_ordinary_small_sd_pipeline_folder(base_pipe):
    size = sum(p.stat().st_size for p in BASE.rglob("*") if p.is_file())
    assert size < 40 * 2**20
    assert not list(BASE.rglob("*.bin")) and not list(BASE.rglob("*.pt"))
    assert base_pipe.unet.dtype.is_floating_point and base_pipe.safety_checker is None
    log = json.loads((BASE / "train_log.json").read_text())
    assert {"settings", "wall_seconds", "vae", "unet"} <= set(log)


def test_shipped_base_draws_the_requested_colour_and_shape(base_pipe):
    # 48 seeded prompts: every shape × colour × background, twice. Chance: colour 1/4, shape 1/3,
    # background 1/2. Measured on the shipped base: see bench/results/demo_base.md.
    acc = [evaluate.base_accuracy(base_pipe, seed) for seed in (0, 1000)]
    colour = sum(a["colour"] for a in acc) / 2
    shape = sum(a["shape"] for a in acc) / 2
    background = sum(a["background"] for a in acc) / 2
    assert colour >= 0.75 and shape >= 0.5 and background >= 0.65, acc


def test_shipped_base_does_not_know_the_demo_concept(base_pipe):
    images = evaluate.sample(base_pipe, evaluate.CONCEPT_PROMPTS, seed=1000)
    assert score.concept_score(images) <= 0.2


def test_reproduction_script_short_run_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "base"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_demo_base.py"), "--out", str(out),
                        "--short", "--threads", "1", "--seed", "3"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=600,
                       env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    log = json.loads((out / "train_log.json").read_text())
    assert log["settings"]["short"] is True and log["settings"]["seed"] == 3
    assert log["unet"]["steps_done"] == 3 and log["wall_seconds"] > 0
    pipe = evaluate.load_pipeline(out)
    images = evaluate.sample(pipe, ["a red circle on a white background"], seed=0, steps=2)
    assert images[0].size == (64, 64)
