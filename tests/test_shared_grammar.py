"""One grammar per shared idea, torch-free where the GUI needs it: the base-model string, the device
choice, A1111 infotext (the trainer's previews and the GUI's Civitai bundle write the same text)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO
from trainer.models.spec import BaseSpec, display_name, parse_base
from trainer.train.device import DeviceUnavailable, choose_device


def test_base_strings(tmp_path):
    ckpt = tmp_path / "my model.safetensors"
    ckpt.write_bytes(b"")
    folder = tmp_path / "owner" / "name"
    folder.mkdir(parents=True)
    cases = {
        "builtin:shapes": BaseSpec("builtin", "builtin:shapes"),
        "tiny:sdxl": BaseSpec("tiny", "tiny:sdxl", family="sdxl"),
        "tiny:sd1:3": BaseSpec("tiny", "tiny:sd1:3", family="sd1", seed=3),
        "random:sd15": BaseSpec("random", "random:sd15", family="sd1"),
        str(ckpt): BaseSpec("path", str(ckpt)),
        "runwayml/stable-diffusion-v1-5": BaseSpec("hub", "runwayml/stable-diffusion-v1-5"),
        "models/v1-5.safetensors": BaseSpec("path", "models/v1-5.safetensors"),  # a file name, even if missing
        "./owner/name": BaseSpec("path", "./owner/name"),
        "just-a-name": BaseSpec("path", "just-a-name"),
    }
    for text, want in cases.items():
        assert parse_base(f"  {text} ") == want, text
    assert parse_base("builtin:shapes").path.name == "shapes_base"
    assert parse_base("builtin:shapes").bundled and parse_base("tiny:sd1").bundled
    assert not parse_base("random:sdxl").bundled
    with pytest.raises(ValueError, match="seed"):
        parse_base("tiny:sd1:x")
    assert display_name(str(ckpt)) == "my model"
    assert display_name("builtin:shapes") == "shapes"
    assert display_name("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert display_name(str(folder)) == "name"


def test_an_existing_folder_wins_over_a_hub_id_of_the_same_spelling(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_base("owner/name").kind == "path"
    assert parse_base("other/name").kind == "hub"


def test_device_choice():
    assert choose_device("auto", cuda=True, mps=True) == "cuda"
    assert choose_device("auto", cuda=False, mps=True) == "mps"
    assert choose_device("auto", cuda=False, mps=False) == "cpu"
    assert choose_device("cpu", cuda=True, mps=False) == "cpu"
    with pytest.raises(DeviceUnavailable, match="precision.device = cuda"):
        choose_device("cuda", cuda=False, mps=False)


def test_grammar_modules_and_the_estimates_family_detection_do_not_import_torch():
    code = ("import sys, trainer.models.spec, trainer.models.detect, trainer.train.device, "
            "trainer.formats.infotext, trainer.estimate\n"
            "from trainer.config import load_preset\nfrom trainer.estimate import estimate\n"
            "estimate(load_preset('demo'))\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_preview_and_bundle_write_the_same_infotext():
    from trainer.config import load_preset
    from trainer.train.sampling import SampleSpec, a1111_parameters
    from ui.export_bundle import a1111_parameters as bundle_parameters

    cfg = load_preset("demo")
    s = cfg.sampling
    spec = SampleSpec(prompt=s.prompts[0], seed=s.seed, negative=s.negative_prompt, steps=s.steps,
                      guidance_scale=s.guidance_scale, sampler=s.sampler, width=64, height=64)
    ours = a1111_parameters(spec, "shapes", ("zkq-stripes", 1.0))
    bundle = bundle_parameters(cfg, {"prompt": spec.prompt, "seed": spec.seed}, "zkq-stripes", 64, 64)
    assert ours == bundle
    want = f"Steps: 20, Sampler: DPM++ 2M, CFG scale: 5, Seed: {s.seed}, Size: 64x64, Model: shapes"
    assert ours.splitlines()[2] == want
    assert ours.splitlines()[0].endswith("<lora:zkq-stripes:1>")


def test_old_run_folders_with_sampling_cfg_still_load(tmp_path):
    from trainer.config import load_config

    p = tmp_path / "config.toml"
    p.write_text("[sampling]\ncfg = 6.5\n", encoding="utf-8")
    assert load_config(p).sampling.guidance_scale == 6.5
