"""trainer/estimate.py: cheap to import, arithmetic of steps and epochs, parameter counts that match the
real architectures, sensible directions, and within 25% of the peak RSS measured by bench/bench_cpu.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from trainer.config import load_preset
from trainer.estimate import FAMILY_PARAMS, estimate, family_of, format_estimate, trainable_params


def cfg(**sets):
    return load_preset("tiny-test", [f"{k}={v}" for k, v in sets.items()])


def test_importing_the_estimate_does_not_import_torch():
    code = "import sys, trainer.estimate; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_steps_and_epochs():
    e = estimate(cfg(**{"dataset.batch_size": 4, "dataset.repeats": 2, "schedule.max_train_steps": 100}),
                 num_images=10, device="cpu")
    assert (e["steps"], e["batches_per_epoch"], e["epochs"]) == (100, 5, 20)
    e = estimate(cfg(**{"dataset.batch_size": 3, "schedule.max_train_steps": 10, "schedule.grad_accum": 2}),
                 num_images=7, device="cpu")
    assert (e["batches_per_epoch"], e["epochs"]) == (3, 7)  # 20 micro-batches over 3 per epoch
    assert estimate(cfg(), device="cpu")["epochs"] is None


def test_family_from_spec_and_argument():
    assert family_of(cfg(**{"model.base": "random:sdxl"})) == "sdxl"
    assert family_of(cfg(**{"model.base": "random:sd15"})) == "sd1"
    assert family_of(cfg()) == "tiny"
    assert family_of(cfg(**{"model.base": "/models/sd_xl_base_1.0.safetensors"})) == "sdxl"
    assert family_of(cfg(**{"model.base": "/models/v1-5-pruned.safetensors"})) == "sd1"
    assert family_of(cfg(**{"model.base": "/m/x.safetensors", "model.family": "sd2-v"})) == "sd2"
    assert family_of(cfg(), "sdxl") == "sdxl"
    with pytest.raises(ValueError, match="unknown family"):
        estimate(cfg(), family="sd9")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_parameter_counts_match_the_real_architectures(family):
    """Built on the meta device (no memory): base sizes and LoRA sizes as peft really injects them."""
    from trainer.models.base import Base
    from trainer.models.random_arch import build_random
    from trainer.adapter.network import build_network

    parts = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ())
    built = build_random(family, parts)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in built.items()}
    fp = FAMILY_PARAMS[family]
    assert counts["unet"] == fp["unet"] and counts["vae"] == fp["vae"]
    assert [counts[k] for k in parts if k.startswith("text")] == fp["text"]
    c = cfg(**{"model.base": f"random:{family}", "network.rank": 8, "network.conv": "true",
               "network.conv_rank": 4, "network.train_text_encoder": "true"})
    base = Base(family=family, unet=built["unet"], vae=built["vae"],
                text_encoders=[built[k] for k in parts if k.startswith("text")], tokenizers=[], scheduler=None)
    net = build_network(base, c.network)
    assert sum(p.numel() for p in net.all_params()) == trainable_params(c, family)


def test_tiny_parameter_count_matches_the_built_network():
    from trainer.models.tiny import build_tiny
    from trainer.adapter.network import build_network

    c = cfg(**{"network.rank": 4})
    net = build_network(build_tiny("sd1"), c.network)
    assert sum(p.numel() for p in net.all_params()) == estimate(c, device="cpu")["trainable_params"]


def test_directions():
    sd = {"model.base": "random:sd1", "dataset.resolution": 512}
    base = estimate(cfg(**sd), device="cpu")
    assert estimate(cfg(**{**sd, "dataset.resolution": 768}), device="cpu")["peak_memory_bytes"] > base["peak_memory_bytes"]
    assert estimate(cfg(**{**sd, "dataset.batch_size": 4}), device="cpu")["seconds_per_step"] > base["seconds_per_step"]
    gc = estimate(cfg(**{**sd, "precision.gradient_checkpointing": "true"}), device="cpu")
    assert gc["peak_memory_bytes"] < base["peak_memory_bytes"] and gc["seconds_per_step"] > base["seconds_per_step"]
    assert estimate(cfg(**{**sd, "network.rank": 128}), device="cpu")["peak_memory_bytes"] > base["peak_memory_bytes"]
    xl = estimate(cfg(**{"model.base": "random:sdxl", "dataset.resolution": 512}), device="cpu")
    assert xl["peak_memory_bytes"] > base["peak_memory_bytes"]
    # on a GPU, half precision halves the weights; those figures are flagged as unmeasured
    g16 = estimate(cfg(**{**sd, "precision.mixed_precision": "bf16"}), device="cuda")
    g32 = estimate(cfg(**{**sd, "precision.mixed_precision": "no"}), device="cuda")
    assert g16["peak_memory_bytes"] < g32["peak_memory_bytes"] and g16["seconds_per_step"] < g32["seconds_per_step"]
    assert g16["memory_kind"] == "vram" and not g16["measured"] and base["measured"]
    assert "GPU figures unmeasured" in format_estimate(g16) and "RAM" in format_estimate(base)


def test_memory_estimate_within_25_percent_of_the_measured_bench():
    """Recomputes the estimate with today's constants for every configuration bench/bench_cpu.py measured."""
    from trainer.config import TrainConfig, deep_merge, from_dict

    report = json.loads((REPO / "bench" / "results" / "cpu.json").read_text())
    assert {r["name"] for r in report["results"]} >= {"tiny", "sd15", "sdxl"}
    for r in report["results"]:
        # at the precision the row was measured in: on a CPU with native bf16 the trainer (and so the
        # estimate) would otherwise pick bf16, and these rows are fp32
        c = from_dict(deep_merge(TrainConfig().model_dump(mode="json"), {
            "model": {"base": r["model"]}, "dataset": {"resolution": r["resolution"], "batch_size": r["batch"]},
            "precision": {"cpu_bf16": "off" if r["dtype"] == "float32" else "on"}}))
        e = estimate(c, device="cpu")
        err = e["peak_memory_bytes"] / r["peak_rss_bytes"] - 1
        assert abs(err) <= 0.25, (r["name"], f"{err:+.1%}")


def test_family_read_from_a_local_checkpoint_header(tmp_path):
    """A file named like anything: the family comes from its cross-attention width, not its name."""
    import torch
    from safetensors.torch import save_file

    from trainer.config import load_preset
    from trainer.estimate import family_of

    cfg = load_preset("tiny-test")
    for width, family in ((768, "sd1"), (1024, "sd2"), (2048, "sdxl")):
        p = tmp_path / f"model-{width}.safetensors"
        save_file({"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight":
                   torch.zeros(640, width)}, str(p))
        cfg.model.base = str(p)
        assert family_of(cfg) == family


def test_a_measured_speed_scales_the_compute_and_the_run_counts_caching_and_saves():
    from trainer.estimate import NOMINAL_CPU_GFLOPS, save_count

    sd = {"model.base": "random:sd1", "dataset.resolution": 512, "schedule.max_train_steps": 1000}
    nominal = estimate(cfg(**sd), num_images=40, device="cpu")
    fast = estimate(cfg(**sd), num_images=40, device="cpu", speed={"gflops": 2 * NOMINAL_CPU_GFLOPS})
    assert not nominal["calibrated"] and fast["calibrated"] and "measured now" in fast["calibration"]
    # twice the measured speed: half the compute (steps, previews, caching); saving is disk-bound
    for part in ("train_seconds", "preview_seconds", "cache_seconds"):
        assert fast[part] == pytest.approx(nominal[part] / 2, rel=0.02), part
    assert fast["save_seconds"] == nominal["save_seconds"] > 0
    parts = ("train_seconds", "preview_seconds", "cache_seconds", "save_seconds", "loftq_setup_seconds",
             "validation_seconds")
    assert nominal["total_seconds"] == pytest.approx(sum(nominal[p] for p in parts))
    # caching grows with the images, and is skipped when latents are not cached
    assert estimate(cfg(**sd), num_images=80, device="cpu")["cache_seconds"] == pytest.approx(2 * nominal["cache_seconds"])
    assert estimate(cfg(**{**sd, "dataset.cache_latents": "false"}), num_images=40, device="cpu")["cache_seconds"] == 0
    # saves: every N steps before the end, and the end
    assert save_count(cfg(**sd)) == 1 and nominal["saves"] == 1
    assert save_count(cfg(**{**sd, "saving.every_n_steps": 250})) == 4  # 250, 500, 750, end
    assert save_count(cfg(**{**sd, "saving.every_n_steps": 300})) == 4  # 300, 600, 900, end
    assert "in all with encoding and saving" in format_estimate(nominal)


def test_validation_is_counted_at_step_0_each_save_and_every_n_steps_between():
    from trainer.estimate import validation_count, validation_images

    sd = {"model.base": "random:sd1", "dataset.resolution": 512, "schedule.max_train_steps": 1000,
          "saving.every_n_steps": 250}
    off = estimate(cfg(**sd), num_images=40, device="cpu")
    assert off["validations"] == 0 and off["validation_seconds"] == 0
    on = estimate(cfg(**sd, **{"validation.split": 0.2}), num_images=40, device="cpu")
    assert validation_count(cfg(**sd, **{"validation.split": 0.2})) == on["validations"] == 5  # 0, 250, …, end
    assert validation_images(cfg(**sd, **{"validation.split": 0.2}), 40) == 8
    # 5 validations × 8 images × 4 timesteps, a forward each (a third of a step's time per image of its batch)
    per_image = on["seconds_per_step"] / cfg(**sd).dataset.batch_size
    assert on["validation_seconds"] == pytest.approx(5 * 8 * 4 * per_image / 3)
    assert on["total_seconds"] == pytest.approx(off["total_seconds"] + on["validation_seconds"])
    assert "saving and validation" in format_estimate(on)
    # every 100 steps as well: 100, 200, 300, 400, 600, … (not 500: a save step measures anyway)
    every = cfg(**sd, **{"validation.split": 0.2, "validation.every_n_steps": 100})
    assert validation_count(every) == 1 + 4 + 9 - 1
    ema = estimate(cfg(**sd, **{"validation.split": 0.2, "optimizer.ema": "true"}), num_images=40, device="cpu")
    assert ema["validation_seconds"] == pytest.approx(2 * on["validation_seconds"])  # the EMA's weights too


def test_the_time_left_counts_the_previews_and_saves_still_due():
    from trainer.train.timing import Progress, due_after

    assert due_after(0, 10, 3) == 4  # steps 3, 6, 9 and the end
    assert due_after(9, 10, 3) == 1  # the end only
    assert due_after(10, 10, 3) == 0
    assert due_after(4, 10, 0) == 1  # no schedule: the end
    assert due_after(0, 9, 3) == 3  # 3, 6, and the end (step 9 is the end: drawn once)
    p = Progress(step=4, step_times=[1.0, 3.0])
    assert p.eta(10) == pytest.approx(12.0)  # 6 steps at 2 s
    assert p.eta(10, extra_s=5.0) == pytest.approx(17.0)


def test_a_family_presets_style_prompts_and_size_are_in_the_preview_estimate():
    # the preset sets a style and no prompts: the trainer draws the style's prompts at its size (1024)
    xl = load_preset("illustrious-xl", ["schedule.max_train_steps=1000", "dataset.resolution=512"])
    assert not xl.sampling.prompts and xl.sampling.every_n_steps == 250
    e = estimate(xl, num_images=20, device="cuda")
    assert e["previews"] == 2 * (1 + 3 + 1)  # two prompts: step 0 (the base), 250, 500, 750, the end
    at_train_size = estimate(load_preset("illustrious-xl", ["schedule.max_train_steps=1000", "dataset.resolution=512",
                                                            "sampling.size=512"]), num_images=20, device="cuda")
    assert e["preview_seconds"] == pytest.approx(4 * at_train_size["preview_seconds"])  # 1024² is 4× the pixels
    assert estimate(load_preset("illustrious-xl", ["sampling.style=none"]), num_images=20)["previews"] == 0
