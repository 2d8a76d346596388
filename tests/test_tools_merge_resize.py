"""Merge: the merged checkpoint generates what base + adapter generates. Resize: full rank changes
nothing; lower ranks report the kept energy and the weight error."""
import json
import subprocess
import sys

import pytest
import torch

from trainer.config import NetworkSection
from trainer.formats.kohya_export import kohya_tensors
from trainer.formats.kohya_import import apply_kohya, read_kohya
from tests.probe import text_states, unet_output
from trainer.formats.save import save_tensors
from trainer.models.tiny import build_tiny
from trainer.adapter.network import build_network
from trainer.tools.merge import merge_into, save_merged
from trainer.tools.resize import ResizeError, resize_file


def adapter_file(tmp_path, family="sd1", **kw):
    base = build_tiny(family)
    cfg = dict(rank=6, alpha=3, conv=True, conv_rank=4, conv_alpha=2, train_text_encoder=True)
    cfg.update(kw)
    build_network(base, NetworkSection(**cfg))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in [base.unet, *base.text_encoders]:
            for n, p in m.named_parameters():
                if p.requires_grad and not p.any():
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
    path = tmp_path / f"{family}.safetensors"
    save_tensors(path, kohya_tensors(base), {"ss_network_dim": "6", "ss_network_alpha": "3.0"}, "fp32")
    return path


def outs(base):
    return unet_output(base), text_states(base)


def diff(a, b):
    return max([(a[0] - b[0]).abs().max().item()] + [(x - y).abs().max().item() for x, y in zip(a[1], b[1])])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_merged_checkpoint_generates_like_base_plus_adapter(family, tmp_path):
    lora = adapter_file(tmp_path, family)
    live = build_tiny(family)
    apply_kohya(live, lora, strength=0.8)
    ref = outs(live)
    merged = build_tiny(family)
    merge_into(merged, lora, strength=0.8)
    assert not any("lora" in n for n, _ in merged.unet.named_parameters())
    assert diff(outs(merged), ref) <= 1e-4

    folder = save_merged(merged, tmp_path / "merged")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    reloaded = build_tiny(family)
    reloaded.unet, reloaded.vae = pipe.unet, pipe.vae
    reloaded.text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    assert diff(outs(reloaded), ref) <= 1e-4
    with pytest.raises(FileExistsError):
        save_merged(merged, folder)
    with pytest.raises(ValueError, match="diffusers.safetensors"):
        save_merged(merged, tmp_path / "merged.safetensors", fmt="single")
    single = save_merged(merged, tmp_path / "merged.diffusers.safetensors", fmt="single")
    from safetensors.torch import load_file

    sd = load_file(str(single))
    assert torch.equal(sd["unet.conv_in.weight"], merged.unet.conv_in.weight)


def test_merge_cli_writes_a_diffusers_folder(tmp_path):
    lora = adapter_file(tmp_path)
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "trainer", "merge", "--base", "tiny:sd1", "--lora", str(lora), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "model_index.json").is_file() and (out / "unet").is_dir()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr


def test_resize_full_rank_changes_nothing(tmp_path):
    lora = adapter_file(tmp_path)
    res, rep = resize_file(lora, tmp_path / "same.safetensors", rank=64)
    assert rep.kept_energy == pytest.approx(1.0, abs=1e-9) and rep.weight_error < 1e-6
    a, b = read_kohya(lora).modules, read_kohya(res.path).modules
    for name, mw in a.items():
        r = mw.tensors["lora_down.weight"].shape[0]
        def delta(m):
            d, u = m.tensors["lora_down.weight"], m.tensors["lora_up.weight"]
            return m.scale * (u.reshape(u.shape[0], -1) @ d.reshape(d.shape[0], -1))
        assert b[name].tensors["lora_down.weight"].shape[0] == r
        assert b[name].scale == pytest.approx(mw.scale)
        assert (delta(b[name]) - delta(mw)).abs().max() <= 1e-5
    x, y = build_tiny("sd1"), build_tiny("sd1")
    apply_kohya(x, lora)
    apply_kohya(y, res.path)
    assert diff(outs(x), outs(y)) <= 1e-5


def test_resize_lower_rank_and_energy_report(tmp_path):
    lora = adapter_file(tmp_path)
    res, rep = resize_file(lora, tmp_path / "r2.safetensors", rank=2)
    assert {m.rank_after for m in rep.modules} == {2}
    assert 0 < rep.kept_energy < 1 and 0 < rep.weight_error < 1
    assert rep.weight_error == pytest.approx((1 - rep.kept_energy) ** 0.5, rel=1e-6)
    m = rep.modules[0]
    assert m.weight_error == pytest.approx((1 - m.kept_energy) ** 0.5, rel=1e-4)
    from trainer.formats import safetensors_io as sio

    md = sio.read_header(res.path).metadata
    assert md["ss_network_dim"] == "2" and md["sshs_model_hash"] == sio.model_hash(res.path)
    _, rep_e = resize_file(lora, tmp_path / "e.safetensors", energy=0.9)
    assert all(mm.kept_energy >= 0.9 - 1e-9 for mm in rep_e.modules)
    assert sio.read_header(tmp_path / "e.safetensors").metadata["ss_network_dim"] == "Dynamic"
    with pytest.raises(FileExistsError):
        resize_file(lora, tmp_path / "r2.safetensors", rank=3)
    with pytest.raises(ResizeError):
        resize_file(lora, tmp_path / "x.safetensors")
    r = subprocess.run([sys.executable, "-m", "trainer", "resize", str(lora), "--out", str(tmp_path / "c.safetensors"),
                        "--rank", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert 0 < out["kept_energy"] < 1 and out["weight_error"] > 0
