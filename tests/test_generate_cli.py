"""`python -m trainer generate`: a strength grid from a trained adapter; strength 0 is the base exactly."""
import json

import numpy as np
from PIL import Image

from tests.helpers import make_dataset, run_in_process, run_trainer, write_config


def test_strength_grid_and_zero_equals_base(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 3,
                                            "sampling.prompts": [], "optimizer.lr": 5e-2,
                                            "saving.precision": "fp32"})
    assert run_in_process("train", str(cfg), "--quiet").returncode == 0
    adapter = tmp_path / "run" / "output" / "tiny-test.safetensors"
    common = ["--base", "tiny:sd1", "--prompt", "a sks shape", "--steps", "3", "--seed", "7"]
    r = run_in_process("generate", *common, "--adapter", str(adapter), "--strengths", "0,1",
                    "--out", str(tmp_path / "grid"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert [x["strength"] for x in rows] == [0.0, 1.0]
    b = run_in_process("generate", *common, "--out", str(tmp_path / "base"), "--json")
    assert b.returncode == 0, b.stderr[-2000:]
    base_img = np.asarray(Image.open(json.loads(b.stdout)[0]["path"]))
    zero = np.asarray(Image.open(rows[0]["path"]))
    one = np.asarray(Image.open(rows[1]["path"]))
    assert np.array_equal(zero, base_img)
    assert not np.array_equal(one, base_img)
    params = Image.open(rows[1]["path"]).text["parameters"]
    assert "<lora:tiny-test:1>" in params and "Seed: 7" in params

    # the compare tab's grid: a block per prompt (prompt i at seed + i), a labelled row per adapter, and grid.png
    g = run_in_process("generate", *common, "--prompt", "a red sks shape", "--adapter", str(adapter), "--label", "step 3",
                    "--adapter", str(adapter), "--label", "again", "--strengths", "0,1", "--out", str(tmp_path / "g"),
                    "--grid", "--json")
    assert g.returncode == 0, g.stderr[-2000:]
    cells = json.loads(g.stdout)
    assert [(c["prompt_index"], c["label"], c["strength"], c["seed"]) for c in cells] == [
        (p, label, s, 7 + p) for label in ("step 3", "again") for p in (0, 1) for s in (0.0, 1.0)]
    pixels = {(c["prompt_index"], c["row"], c["strength"]): np.asarray(Image.open(c["path"])) for c in cells}
    assert np.array_equal(pixels[(0, 0, 0.0)], base_img) and np.array_equal(pixels[(0, 1, 1.0)], one)
    assert not np.array_equal(pixels[(1, 0, 0.0)], base_img)  # another prompt, another seed
    grid = Image.open(tmp_path / "g" / "grid.png")
    assert grid.width > 2 * 128 and grid.height > 4 * 128


def test_generate_refuses_a_broken_adapter(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    r = run_trainer("generate", "--base", "tiny:sd1", "--prompt", "x", "--adapter", str(bad),
                    "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "bad.safetensors" in r.stderr
