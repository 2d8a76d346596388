"""v-prediction with zero terminal SNR (NoobAI-XL v-pred and the like), end to end on tiny SDXL- and
SD1-shaped single files: detection from the `v_pred` / `ztsnr` marker tensors, the training schedule,
the loss target, the preview scheduler, the adapter's metadata, the pre-launch checks; and an epsilon
file left exactly as it was."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from tests.test_models_loading import _config_only_copy, _tiny_for_single_file, to_ldm
from trainer.config import TrainConfig
from trainer.formats.metadata import build_metadata
from trainer.models.checks import launch_warnings, model_facts
from trainer.models.detect import detect_prediction_type, detect_zero_terminal_snr, header_keys_and_shapes
from trainer.models.loading import load_base
from trainer.models.tiny import noise_scheduler
from trainer.train.loss import diffusion_loss, prediction_target
from trainer.train.sampling import SAMPLERS, SampleSpec, generate, make_scheduler

FAMILIES = ["sdxl", "sd1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{family: (v-pred+ztsnr file, epsilon file, config folder)}: the same tiny weights, with and
    without the markers NoobAI-XL v-pred carries (0-dim tensors at the top level)."""
    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        tiny = _tiny_for_single_file(family, seed=5)
        sd = {k: v.contiguous() for k, v in to_ldm(tiny.unet, tiny.vae, tiny.text_encoders, family).items()}
        eps = root / f"{family}-eps.safetensors"
        vpred = root / f"{family}-vpred.safetensors"
        save_file(sd, str(eps))
        save_file({**sd, "v_pred": torch.tensor(0.0), "ztsnr": torch.tensor(0.0)}, str(vpred))
        out[family] = (vpred, eps, _config_only_copy(tiny, root / "configs"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_marked_file_is_detected_as_vpred_with_zero_terminal_snr(files, family):
    vpred, eps, configs = files[family]
    shapes, meta = header_keys_and_shapes(vpred)
    assert shapes["v_pred"] == () and shapes["ztsnr"] == ()
    assert detect_prediction_type(family, shapes, meta) == "v_prediction"
    assert detect_zero_terminal_snr(shapes, meta) is True
    assert model_facts(str(vpred)) == model_facts(str(vpred)).__class__(family, "v_prediction", True, True)
    assert model_facts(str(eps)).prediction_type == "epsilon" and not model_facts(str(eps)).zero_terminal_snr

    base = load_base(str(vpred), config_dir=configs)
    assert base.family == family and base.prediction_type == "v_prediction" and base.is_v
    assert base.zero_terminal_snr
    sched = base.scheduler
    assert sched.config.prediction_type == "v_prediction" and sched.config.rescale_betas_zero_snr
    assert sched.config.timestep_spacing == "trailing"
    assert abs(float(sched.alphas_cumprod[-1])) < 1e-7  # pure noise at the last step
    assert float(sched.alphas_cumprod[0]) > 0.99


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_trains_v_targets_on_the_rescaled_schedule(files, family):
    vpred, _, configs = files[family]
    base = load_base(str(vpred), config_dir=configs)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    target = prediction_target(base.scheduler, latents, noise, t, base.is_v)
    ac = base.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(target, ac.sqrt() * noise - (1 - ac).sqrt() * latents, atol=1e-6)
    assert torch.allclose(target[2], -latents[2], atol=1e-6)  # at SNR 0, v is minus the image
    noisy = base.scheduler.add_noise(latents, noise, t)
    assert torch.allclose(noisy[2], noise[2], atol=1e-6)  # and the input pure noise
    cfg = TrainConfig()
    for v in (True, False):  # min-SNR-γ stays finite at SNR 0 for both objectives
        loss = diffusion_loss(torch.zeros_like(target), target, t, base.scheduler, cfg.noise, v, torch.ones(3))
        assert torch.isfinite(loss)
    cfg.noise.v_loss_like_noise = True
    cfg.noise.min_snr_gamma = 0
    per = ((target ** 2).mean(dim=(1, 2, 3)))
    snr = ac.flatten() / (1 - ac.flatten())
    want = (per * snr / (snr + 1)).mean()
    got = diffusion_loss(torch.zeros_like(target), target, t, base.scheduler, cfg.noise, True, torch.ones(3))
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_previews_sample_with_the_matching_scheduler(files, family):
    vpred, _, configs = files[family]
    base = load_base(str(vpred), config_dir=configs)
    for name in SAMPLERS:
        s = make_scheduler(name, base.scheduler)
        assert s.config.prediction_type == "v_prediction", name
        assert s.config.rescale_betas_zero_snr and s.config.timestep_spacing == "trailing", name
        s.set_timesteps(20)
        assert int(s.timesteps[0]) == 999, name  # trailing spacing starts at the pure-noise step


def test_wrong_epsilon_scheduler_would_draw_a_different_image(files):
    """The check above can fail: the same v-pred model drawn with the plain epsilon schedule (what
    previews used before) gives another image than with its own."""
    vpred, _, configs = files["sdxl"]
    base = load_base(str(vpred), config_dir=configs)
    spec = SampleSpec("a red circle", seed=3, steps=4, guidance_scale=5.0, guidance_rescale=0.7, width=64,
                      height=64, sampler="euler")
    right = torch.tensor(list(generate(base, spec).tobytes()), dtype=torch.float32)
    right_again = torch.tensor(list(generate(base, spec).tobytes()), dtype=torch.float32)
    assert torch.equal(right, right_again)
    base.scheduler = noise_scheduler("epsilon")
    wrong = torch.tensor(list(generate(base, spec).tobytes()), dtype=torch.float32)
    assert (right - wrong).abs().mean() > 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_epsilon_file_keeps_todays_schedule(files, family):
    _, eps, configs = files[family]
    base = load_base(str(eps), config_dir=configs)
    assert base.prediction_type == "epsilon" and not base.zero_terminal_snr
    # the training schedule as the loader built it before zero terminal SNR existed
    config = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    keep = {k: v for k, v in config.items() if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                     "trained_betas", "steps_offset", "timestep_spacing",
                                                     "rescale_betas_zero_snr")}
    today = DDPMScheduler.from_config(keep, prediction_type="epsilon", clip_sample=False)
    assert dict(base.scheduler.config) == dict(today.config)
    assert torch.equal(base.scheduler.betas, today.betas)
    assert torch.equal(base.scheduler.alphas_cumprod, today.alphas_cumprod)
    assert torch.equal(base.scheduler.alphas_cumprod, noise_scheduler("epsilon").alphas_cumprod)  # SD's own
    for name in SAMPLERS:
        s, t = make_scheduler(name, base.scheduler), make_scheduler(name, today)
        s.set_timesteps(20), t.set_timesteps(20)
        assert torch.equal(s.timesteps, t.timesteps) and dict(s.config) == dict(t.config), name


def test_adapter_metadata_records_v_and_zero_terminal_snr(files):
    vpred, eps, configs = files["sdxl"]
    for path, v in ((vpred, True), (eps, False)):
        base = load_base(str(path), config_dir=configs)
        for minimal in (False, True):
            md = build_metadata(TrainConfig(), {"family": base.family, "prediction_type": base.prediction_type,
                                                "zero_terminal_snr": base.zero_terminal_snr}, minimal=minimal)
            assert md["ss_v_parameterization"] == str(v) and md["ss_zero_terminal_snr"] == str(v)
            assert md["modelspec.prediction_type"] == ("v" if v else "epsilon")


def test_prelaunch_checks_flag_a_preset_that_does_not_fit_the_file(files):
    vpred, eps, _ = files["sdxl"]

    def warnings(base, **model):
        cfg = TrainConfig()
        cfg.model.base = str(base)
        for k, v in model.items():
            setattr(cfg.model, k, v)
        return launch_warnings(cfg)

    vpred_preset = {"prediction_type": "v_prediction", "zero_terminal_snr": "on"}
    eps_preset = {"prediction_type": "epsilon", "zero_terminal_snr": "off"}
    assert warnings(vpred, **vpred_preset) == [] and warnings(eps, **eps_preset) == []
    assert warnings(vpred) == [] and warnings(eps) == []  # auto follows the file
    [w] = warnings(eps, **vpred_preset)[:1]
    assert "no v-prediction marker" in w and eps.stem in w
    got = warnings(vpred, **eps_preset)
    assert any("is a v-prediction model" in w for w in got) and any("ztsnr marker" in w for w in got)
    [clip] = warnings(eps, clip_skip=2)
    assert "SDXL already uses the penultimate" in clip
    assert warnings(files["sd1"][1], clip_skip=2) == []  # SD1.5 anime models do want it
