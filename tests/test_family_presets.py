"""The family presets an artist picks by name (Illustrious, NoobAI eps / v-pred, Pony, SDXL realistic,
SD1.5 anime / realistic, each with a low-VRAM variant): they load, say what they are for, fit the VRAM
tier they claim by the estimate, carry their family's prediction settings, and train 2 steps through the
CLI on a tiny model of their architecture, previews in their own style included."""
from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tests.helpers import events, make_dataset, run_in_process, run_trainer
from trainer.config import ConfigError, load_preset, preset_description, read_preset
from trainer.estimate import estimate
from trainer.models.checks import launch_warnings
from trainer.train.preview_styles import STYLES, preview_plan

# preset -> (family, VRAM tier in GiB)
FAMILY_PRESETS = {
    "illustrious-xl": ("sdxl", 24), "illustrious-xl-12gb": ("sdxl", 12),
    "noobai-xl-eps": ("sdxl", 24), "noobai-xl-eps-12gb": ("sdxl", 12),
    "noobai-xl-vpred": ("sdxl", 24), "noobai-xl-vpred-12gb": ("sdxl", 12),
    "pony-v6": ("sdxl", 24), "pony-v6-12gb": ("sdxl", 12),
    "sdxl-realistic": ("sdxl", 24), "sdxl-realistic-12gb": ("sdxl", 12),
    "sd15-anime": ("sd1", 12), "sd15-anime-8gb": ("sd1", 8),
    "sd15-realistic": ("sd1", 12), "sd15-realistic-8gb": ("sd1", 8),
}
VARIANTS = {name: name.rsplit("-", 1)[0] for name in FAMILY_PRESETS if name.endswith("gb")}
MEMORY_SETTINGS = {("dataset", "batch_size"), ("optimizer", "name"), ("precision", "gradient_checkpointing")}


@pytest.mark.parametrize("name", sorted(FAMILY_PRESETS))
def test_preset_loads_says_what_it_is_for_and_fits_its_tier(name):
    family, tier = FAMILY_PRESETS[name]
    cfg = load_preset(name)
    assert cfg.model.family == family  # Pony & co. load as SDXL without ticking anything
    description = preset_description(name)
    assert " — " in description and f"{tier} GB" in description, description
    est = estimate(cfg, device="cuda")
    assert est["family"] == family
    assert est["peak_memory_bytes"] < tier * 2**30, (name, est["peak_memory_bytes"] / 2**30)
    if tier > 8:  # the standard preset does not fit the next tier down (else it would be that tier)
        lower = {24: 12, 12: 8}[tier]
        assert est["peak_memory_bytes"] > lower * 2**30 or family == "sd1", name
    plan = preview_plan(cfg)
    assert cfg.sampling.style in STYLES and plan.prompts and plan.negative
    assert plan.size == (1024 if family == "sdxl" else 512)


def test_prediction_and_clip_skip_per_family():
    for name, (family, _) in FAMILY_PRESETS.items():
        m = load_preset(name).model
        vpred = "vpred" in name
        assert (m.prediction_type, m.zero_terminal_snr) == (("v_prediction", "on") if vpred else ("epsilon", "off"))
        assert m.clip_skip == (2 if name.startswith("sd15-anime") else 1), name
        assert not [w for w in launch_warnings(load_preset(name)) if "clip skip" in w]
    vp = load_preset("noobai-xl-vpred")
    assert vp.noise.noise_offset == 0 and vp.sampling.guidance_rescale == 0.7


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_low_vram_variant_changes_only_memory_settings(variant):
    parent = VARIANTS[variant]
    a, b = load_preset(parent).model_dump(), load_preset(variant).model_dump()
    changed = {(s, k) for s in a for k in a[s] if a[s][k] != b[s][k]}
    assert changed and changed <= MEMORY_SETTINGS, changed
    est_parent, est_variant = estimate(load_preset(parent), device="cuda"), estimate(load_preset(variant), device="cuda")
    assert est_variant["peak_memory_bytes"] < est_parent["peak_memory_bytes"]


def test_extends_chain_and_its_errors(tmp_path):
    data, description = read_preset("noobai-xl-vpred-12gb")
    assert "extends" not in data and "description" not in data
    assert data["model"]["prediction_type"] == "v_prediction" and data["sampling"]["style"] == "noobai"
    assert description.startswith("NoobAI-XL v-pred, 12 GB")
    loop = tmp_path / "loop.toml"
    loop.write_text('extends = "loop"\n')
    with pytest.raises(ConfigError, match="circle"):
        read_preset(str(loop))
    bad = tmp_path / "bad.toml"
    bad.write_text("description = 3\n")
    with pytest.raises(ConfigError, match="description must be a string"):
        read_preset(str(bad))
    missing = tmp_path / "missing.toml"
    missing.write_text('extends = "no-such-preset"\n')
    with pytest.raises(ConfigError, match="no-such-preset"):
        load_preset(str(missing))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILY_PRESETS))
def test_preset_trains_two_steps_on_its_tiny_architecture(tmp_path, name):
    family, _ = FAMILY_PRESETS[name]
    ds = make_dataset(tmp_path / "ds", n=2, size=64)
    run = tmp_path / "run"
    sets = {"model.base": f"tiny:{family}", "dataset.path": str(ds), "dataset.resolution": 64,
            "schedule.max_train_steps": 2, "schedule.warmup_steps": 0, "sampling.size": 64, "sampling.steps": 2,
            "dataset.cache_to_disk": False, "saving.trigger_phrase": "zkq", "precision.device": "cpu"}
    args = ["train", name, "--preset", "--run-dir", str(run), "--quiet"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    r = run_in_process(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = events(run)
    assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "finished"
    assert not [e for e in ev if e["type"] == "warning" and "clip skip" in e.get("message", "")]
    samples = [e for e in ev if e["type"] == "sample"]
    style = STYLES[load_preset(name).sampling.style]
    assert samples and all("zkq" in e["prompt"] and "{trigger}" not in e["prompt"] for e in samples)
    assert {e["prompt"] for e in samples} == {p.replace("{trigger}", "zkq") for p in style.prompts}
    with safe_open(str(run / ev[-1]["adapter"]), "pt") as f:
        md = f.metadata()
    vpred = "vpred" in name
    assert md["ss_v_parameterization"] == str(vpred) and md["ss_zero_terminal_snr"] == str(vpred)
    assert md["modelspec.prediction_type"] == ("v" if vpred else "epsilon")
    assert md["ss_clip_skip"] == str(load_preset(name).model.clip_skip)
    used = (run / "config.used.toml").read_text()
    assert f'style = "{load_preset(name).sampling.style}"' in used
    assert json.loads(md["ss_network_args"]) is not None


def test_preview_plan_fills_the_trigger_and_keeps_what_the_user_set():
    cfg = load_preset("pony-v6")
    assert preview_plan(cfg).prompts[0].startswith("score_9, score_8_up, score_7_up, 1girl")  # no trigger: slot gone
    cfg.saving.trigger_phrase = "zkq style"
    plan = preview_plan(cfg)
    assert all("zkq style" in p for p in plan.prompts) and plan.size == 1024
    cfg.sampling.prompts, cfg.sampling.negative_prompt, cfg.sampling.size = ["my prompt"], "blurry", 768
    assert preview_plan(cfg) == type(plan)(["my prompt"], "blurry", 768)
    cfg.sampling.style, cfg.sampling.prompts = "none", []
    assert preview_plan(cfg).prompts == []  # no style, no prompts: no previews, as before


@pytest.mark.slow
def test_clip_skip_on_sdxl_is_a_warning_event(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=2, size=64)
    run = tmp_path / "run"
    r = run_trainer("train", "illustrious-xl", "--preset", "--run-dir", str(run), "--quiet",
                    "--set", "model.base=tiny:sdxl", "--set", f"dataset.path={ds}", "--set", "dataset.resolution=64",
                    "--set", "model.clip_skip=2", "--set", "schedule.max_train_steps=1", "--set", "sampling.style=none",
                    "--set", "dataset.cache_to_disk=false", "--set", "precision.device=cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [e["message"] for e in events(run) if e["type"] == "warning"]
    assert any("SDXL already uses the penultimate" in w for w in warnings), warnings
