"""The demo's promise: training presets/demo.toml through the CLI teaches the shapes base the zkq
stripes (concept score ≥ 0.8 on trigger prompts) while prompts without the trigger stay as they were, and
the checkpoint suggested for publishing is one that does."""
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from tests.helpers import REPO
from trainer.demo import evaluate
from trainer.run.best import suggest


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 300 training steps and the evaluation batches passed 900 s on a loaded 2-core machine
def test_demo_preset_teaches_the_concept_and_keeps_the_prior(tmp_path):
    # ATELIER_DEMO_MIXED_PRECISION=bf16: the same promise in bf16 (bench/results/precision.md: on a CPU with
    # native bf16 it passed in 90 s; emulated elsewhere, ~90 min)
    precision = os.environ.get("ATELIER_DEMO_MIXED_PRECISION", "")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "trainer", "train", str(REPO / "presets" / "demo.toml"),
                        "--run-dir", str(run), "--quiet", "--set", "sampling.every_n_steps=0",
                        "--set", "sampling.at_start=false",
                        *(["--set", f"precision.mixed_precision={precision}", "--set", "precision.cpu_bf16=on"]
                          if precision else [])],
                       capture_output=True, text=True, cwd=str(REPO), timeout=2700)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "output" / "zkq-stripes.safetensors").is_file()
    # the checkpoint Export suggests publishing (validation loss; previews are off here, so no drift reading:
    # bench/best_checkpoint.py measures the suggestion with them) is the one that must keep the promise
    suggestion = suggest(run, "zkq pattern")
    assert suggestion.pick is not None and len(suggestion.candidates) == 3, suggestion  # saves at 100, 200, 300
    adapter = run / suggestion.pick.adapter
    with safe_open(str(adapter), "pt") as f:  # the file says what the run trained in
        assert f.metadata()["ss_mixed_precision"] == (precision or "no")

    base = evaluate.load_pipeline()
    adapted = evaluate.load_adapter(evaluate.load_pipeline(), adapter)
    # the base alone scores ≤ 0.2 on the trigger prompts at these seeds: tests/test_demo_base.py
    m = evaluate.concept_and_prior(base, adapted, seed=1000, before=False)
    assert m["concept_after"] >= 0.8, m
    # prompts without the trigger: not striped, and colour/shape as good as the base's (±2 of 24)
    assert m["prior_striped_after"] <= 0.1, m
    assert m["prior_colour_after"] >= m["prior_colour_before"] - 0.09, m
    assert m["prior_shape_after"] >= m["prior_shape_before"] - 0.09, m
    # same seed, same prompt: the adapter may nudge the base's picture but not replace it. Yardstick: the
    # distance between the base's own pictures at two seeds (a different picture of the same prompt).
    # Measured (0-255 scale): 27.6 against 48.8, a ratio of 0.57; a rate of 2e-3 gave 0.85.
    assert m["prior_mean_abs_diff"] <= 0.7 * m["base_seed_to_seed_diff"], m

    # at strength 0 the adapter is there but adds exactly nothing: the base's pixels, bit for bit
    import numpy as np

    at_zero = evaluate.load_adapter(evaluate.load_pipeline(), adapter, scale=0.0)
    prompts = evaluate.CONCEPT_PROMPTS[4:6] + ["a red circle on a white background"]
    for a, b in zip(evaluate.sample(base, prompts, seed=7), evaluate.sample(at_zero, prompts, seed=7)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
