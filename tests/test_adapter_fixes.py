"""Issue 18 points 1, 2, 5, 6 (the DoRA norm), 7 and issue 12 defects 5 and 15: each fix and what it must
keep doing."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.helpers import REPO, events, make_dataset, run_in_process, write_config
from trainer.adapter.dora import ColumnDora, RowDora, col_norm, dora_norm, lora_delta, row_norm
from trainer.adapter.network import build_network
from trainer.config import ConfigError, NetworkSection, TrainConfig, field_meta, from_dict
from trainer.formats.metadata import build_metadata
from trainer.formats.names import adapted_sites
from trainer.models.tiny import build_tiny


# ---------------------------------------------------------------- point 1: the DoRA axis option

def test_dora_axis_defaults_to_in_and_warns_about_out_in_the_form_help():
    assert NetworkSection().dora_axis == "in"
    meta = field_meta(NetworkSection.model_fields["dora_axis"])
    assert meta["choices"][0] == "in"
    assert "Warning" in meta["help"] and "A1111" in meta["help"] and "ComfyUI" in meta["help"]


# ---------------------------------------------------------------- point 2: ss_network_args of DoRA

@pytest.mark.parametrize("axis, wd_on_output", [("in", "False"), ("out", "True")])
def test_dora_network_args_name_the_axis(axis, wd_on_output):
    cfg = TrainConfig()
    cfg.network.use_dora, cfg.network.dora_axis = True, axis
    md = build_metadata(cfg, {"family": "sd1"}, minimal=True)
    args = json.loads(md["ss_network_args"])
    assert args["dora_wd"] == "True" and args["wd_on_output"] == wd_on_output


# ---------------------------------------------------------------- point 6: DoRA's norm without W+ΔW

@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("axis", ["in", "out"])
def test_dora_norm_equals_the_norm_of_the_merged_weight(axis, conv):
    base = build_tiny("sd1")
    build_network(base, NetworkSection(rank=3, alpha=5, use_dora=True, dora_axis=axis, conv=True))
    g = torch.Generator().manual_seed(0)
    checked = 0
    for site in adapted_sites(base).values():
        layer = site.module
        if (layer.get_base_layer().weight.dim() == 4) != conv:
            continue
        with torch.no_grad():
            layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g))
        w = layer.get_base_layer().weight.detach().float() + lora_delta(layer, "default").detach().float()
        want = (col_norm(w) if axis == "in" else row_norm(w)).reshape(-1)
        assert torch.allclose(dora_norm(layer, "default", axis), want, rtol=1e-4, atol=1e-5)
        assert isinstance(layer.lora_variant["default"], ColumnDora if axis == "in" else RowDora)
        checked += 1
    assert checked > 0


def test_row_dora_forward_equals_the_merged_weight():
    base = build_tiny("sd1")
    build_network(base, NetworkSection(rank=3, alpha=5, use_dora=True, dora_axis="out", conv=True))
    g = torch.Generator().manual_seed(0)
    for site in adapted_sites(base).values():
        layer = site.module
        with torch.no_grad():
            layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g))
            layer.lora_magnitude_vector["default"].weight.mul_(1.5)
        bl = layer.get_base_layer()
        x = torch.randn(2, bl.weight.shape[1], 5, 5) if bl.weight.dim() == 4 else torch.randn(2, bl.weight.shape[1])
        merged = RowDora.merged(layer, "default", bl.weight.detach())
        if bl.weight.dim() == 4:
            want = torch.nn.functional.conv2d(x, merged, bl.bias, bl.stride, bl.padding)
        else:
            want = torch.nn.functional.linear(x, merged, bl.bias)
        with torch.no_grad():
            assert torch.allclose(layer(x), want, rtol=1e-4, atol=1e-5), site.kohya


# ---------------------------------------------------------------- point 5: layers without a gradient

def test_text_encoder_layers_after_the_one_used_get_no_adapter():
    sdxl = build_tiny("sdxl")
    build_network(sdxl, NetworkSection(rank=2, train_text_encoder=True))
    names = set(adapted_sites(sdxl))
    n1 = sdxl.text_encoders[0].config.num_hidden_layers
    n2 = sdxl.text_encoders[1].config.num_hidden_layers
    assert not any(n.startswith(f"lora_te1_text_model_encoder_layers_{n1 - 1}_") for n in names)
    assert any(n.startswith(f"lora_te1_text_model_encoder_layers_{n1 - 2}_") for n in names)
    assert any(n.startswith(f"lora_te2_text_model_encoder_layers_{n2 - 1}_") for n in names)  # pooled: used
    sd1 = build_tiny("sd1")
    build_network(sd1, NetworkSection(rank=2, train_text_encoder=True), clip_skip=2)
    n = sd1.text_encoders[0].config.num_hidden_layers
    te = {x for x in adapted_sites(sd1) if x.startswith("lora_te_")}
    assert not any(x.startswith(f"lora_te_text_model_encoder_layers_{n - 1}_") for x in te)
    assert any(x.startswith(f"lora_te_text_model_encoder_layers_{n - 2}_") for x in te)


def test_adalora_takes_a_step_where_a_layer_got_no_gradient():
    """A layer outside the loss's graph (here: a text encoder trained but not used for the loss) leaves
    p.grad None; peft's allocator multiplied by it (TypeError) before."""
    base = build_tiny("sd1")
    net = build_network(base, NetworkSection(algo="adalora", rank=4, adalora_target_rank=2,
                                             train_text_encoder=True), total_steps=10)
    unet = base.unet
    x = torch.randn(1, unet.config.in_channels, 8, 8)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
    unet(x, 500, encoder_hidden_states=ctx).sample.pow(2).mean().backward()
    assert any(p.grad is None for p in net.params_te)
    for step in range(1, 4):
        net.after_step(step)


def test_adalora_trains_sd1_with_clip_skip_2(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    cfg = write_config(tmp_path / "run", **{
        "dataset.path": str(data), "network.algo": "adalora", "network.rank": 4,
        "network.adalora_target_rank": 2, "network.train_text_encoder": "true", "model.clip_skip": 2,
        "schedule.max_train_steps": 4, "sampling.prompts": [], "sampling.at_start": "false"})
    from trainer.config import load_config
    from trainer.train.loop import EXIT_OK, Trainer

    trainer = Trainer(load_config(cfg), tmp_path / "run", quiet=True)
    assert trainer.run() == EXIT_OK, [e for e in events(tmp_path / "run") if e["type"] == "error"]


# ---------------------------------------------------------------- issue 12 defect 15

@pytest.mark.parametrize("rank, target", [(4, 4), (4, 6)])
def test_adalora_target_rank_must_be_below_the_rank(rank, target):
    with pytest.raises(ConfigError) as e:
        from_dict({"network": {"algo": "adalora", "rank": rank, "adalora_target_rank": target}})
    msg = str(e.value)
    assert "AdaLoRA average rank" in msg and "Rank (dim)" in msg
    assert "kthvalue" not in msg
    from_dict({"network": {"algo": "adalora", "rank": rank, "adalora_target_rank": rank - 1}})


# ---------------------------------------------------------------- point 7

def test_modelspec_implementation_is_what_sd_scripts_writes():
    cfg = TrainConfig()
    assert build_metadata(cfg, {"family": "sd1"})["modelspec.implementation"] == "diffusers"
    assert build_metadata(cfg, {"family": "sd2"})["modelspec.implementation"] == "diffusers"
    assert build_metadata(cfg, {"family": "sdxl"})["modelspec.implementation"] == \
        "https://github.com/Stability-AI/generative-models"


def test_loftq_finds_the_top_singular_directions_without_a_full_svd():
    from trainer.adapter.quantize import top_singular

    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(200, 200, generator=g))
    v, _ = torch.linalg.qr(torch.randn(300, 200, generator=g))
    s = torch.cat([torch.linspace(10, 4, 8), torch.logspace(-1, -3, 192)])  # a quantisation error's shape
    m = (u * s) @ v.t()
    uu, ss, vh = top_singular(m, 8)
    assert torch.allclose(ss, s[:8], rtol=1e-3)
    best = (u[:, :8] * s[:8]) @ v[:, :8].t()
    # Eckart–Young: no rank-8 matrix is closer to m than `best`; the randomised one is as close
    assert (m - (uu * ss) @ vh).norm() <= 1.01 * (m - best).norm()


def test_estimate_reports_loftq_set_up_time():
    from trainer.estimate import estimate

    cfg = from_dict({"model": {"base": "random:sd1"}, "network": {"quantize_base": "nf4", "loftq": True}})
    plain = from_dict({"model": {"base": "random:sd1"}, "network": {"quantize_base": "nf4"}})
    e, p = estimate(cfg, device="cpu"), estimate(plain, device="cpu")
    assert p["loftq_setup_seconds"] == 0
    assert 10 < e["loftq_setup_seconds"] < 3600
    assert e["total_seconds"] == pytest.approx(p["total_seconds"] + e["loftq_setup_seconds"])


# ---------------------------------------------------------------- issue 12 defect 5: the demo base

@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory):
    """An adapter trained on the bundled demo base, saved the way the trainer saves it."""
    from trainer.formats.expected import custom_base_label
    from trainer.formats.save import save_adapter
    from trainer.models.resolve import load_any

    base = load_any("builtin:shapes")
    net = build_network(base, NetworkSection(rank=4, alpha=2))
    for p in net.all_params():
        torch.nn.init.normal_(p, std=0.01)
    cfg = TrainConfig()
    cfg.network.rank, cfg.network.alpha = 4, 2
    facts = {"family": base.family, "custom_base": custom_base_label(base, "builtin:shapes")}
    path = tmp_path_factory.mktemp("demo") / "zkq-stripes.safetensors"
    save_adapter(path, base, net, build_metadata(cfg, facts), "fp16")
    return path


def test_demo_adapter_names_the_base_it_fits(demo_adapter):
    from trainer.formats.safetensors_io import read_header

    md = read_header(demo_adapter).metadata
    assert md["ss_base_model_version"] == "custom" and md["ss_atelier_base"] == "builtin:shapes"
    assert "stable-diffusion" not in md["modelspec.architecture"]


def test_real_architectures_are_standard_and_tiny_ones_are_not():
    from trainer.formats.expected import custom_base_label
    from trainer.models.base import Base
    from trainer.models.random_arch import build_random

    m = build_random("sd1", ("unet", "text_encoder"), device="meta")
    real = Base(family="sd1", unet=m["unet"], vae=None, text_encoders=[m["text_encoder"]], tokenizers=[],
                scheduler=None)
    assert custom_base_label(real, "/models/v1-5.safetensors") is None
    assert custom_base_label(build_tiny("sd1"), "tiny:sd1") == "tiny:sd1"


def test_cli_and_studio_give_the_same_verdicts_without_flags(demo_adapter):
    from trainer.formats.verdicts import verdict_rows
    from ui.tab_export import run_check

    cli = run_in_process("check", str(demo_adapter), "--json")
    report = json.loads(cli.stdout)
    assert cli.returncode == 0 and report["verdict"] == "warn", cli.stdout + cli.stderr
    assert "custom_base" in {f["code"] for f in report["findings"]}
    assert not [f for f in report["findings"] if f["severity"] == "error"]  # checked against builtin:shapes
    assert report["reference"] == "derived from the base model"
    rows = verdict_rows(report)
    assert [ok for _, ok, _ in rows] == [False] * 4
    html = run_check(demo_adapter, sys.executable)  # what the Export tab's button shows
    assert "Compatibility: <span class=\"verdict\">WARN</span>" in html
    for client, ok, _ in rows:
        assert f'data-client="{client}" data-ok="{str(ok).lower()}"' in html.replace("&#x27;", "'")
    text = run_in_process("check", str(demo_adapter)).stdout
    for client, ok, _ in rows:
        assert f"{'✓' if ok else '✗'} {client}:" in text


def test_bundle_card_does_not_promise_clients_for_a_demo_adapter(demo_adapter):
    from ui.export_bundle import adapter_fits, model_card

    fits = adapter_fits(demo_adapter)
    assert fits == "builtin:shapes"
    card = model_card(TrainConfig(), "zkq-stripes", 4, 100, fits=fits)
    assert "Use in A1111" not in card and "builtin:shapes" in card and "cannot" in card
    assert "Use in A1111/Forge" in model_card(TrainConfig(), "x", 4, 100, fits=None)


# ---------------------------------------------------------------- point 6: SDXL DoRA / LoCon memory

def test_estimate_predicts_the_measured_sdxl_variant_memory_and_it_fits_16_gb():
    """bench/results/sdxl_variants_memory.json: peak RSS of 2 SDXL steps at 64 px per network type, measured
    by bench/variants_memory.py through the real trainer."""
    from bench.variants_memory import RESOLUTION, VARIANTS, config
    from trainer.estimate import estimate

    rows = json.loads((REPO / "bench" / "results" / "sdxl_variants_memory.json").read_text())
    measured = {r["variant"]: r for r in rows}
    assert "dora-in" in measured  # the default DoRA; LoCon's full-trainer row: see the results file
    for variant, row in measured.items():
        assert variant in VARIANTS
        assert row["steps"] == 2 and row["peak_rss_bytes"] <= 16e9, row
        cfg = from_dict(config(variant, REPO / "datasets"))
        assert cfg.dataset.resolution == RESOLUTION
        est = estimate(cfg, num_images=2, device="cpu")["peak_memory_bytes"]
        assert abs(est / row["peak_rss_bytes"] - 1) <= 0.25, (variant, est, row["peak_rss_bytes"])
