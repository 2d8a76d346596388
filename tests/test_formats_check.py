"""`trainer check` passes our exports and flags, with reasons, files made the classic wrong ways."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from trainer.config import NetworkSection, TrainConfig
from trainer.formats.check import check_file
from trainer.formats.kohya_export import kohya_tensors
from trainer.formats.metadata import build_metadata
from trainer.formats.save import save_tensors
from trainer.models.base import Base
from trainer.models.random_arch import build_random
from trainer.models.tiny import build_tiny
from trainer.adapter.network import build_network


def real_sd1_export():
    """Our exporter's names/shapes for the real SD1.5 (meta), with small random data."""
    m = build_random("sd1", ("unet", "text_encoder"), device="meta")
    base = Base(family="sd1", unet=m["unet"], vae=None, text_encoders=[m["text_encoder"]], tokenizers=[],
                scheduler=None)
    with torch.device("meta"):
        build_network(base, NetworkSection(rank=1, alpha=0.5, train_text_encoder=True))
    g = torch.Generator().manual_seed(0)
    return {k: (torch.tensor(0.5) if k.endswith(".alpha") else torch.randn(t.shape, generator=g) * 0.01)
            for k, t in kohya_tensors(base).items()}


@pytest.fixture(scope="module")
def sd1_real():
    return real_sd1_export()


def meta_for(family, rank=1, alpha=0.5):
    cfg = TrainConfig()
    cfg.network.rank, cfg.network.alpha = rank, alpha
    return build_metadata(cfg, {"family": family, "base_name": "v1-5-pruned.safetensors"}, minimal=True)


def codes(rep):
    return {f.code for f in rep.findings if f.severity in ("error", "warning")}


def test_our_real_sd15_export_passes(sd1_real, tmp_path):
    path = tmp_path / "ours.safetensors"
    save_tensors(path, sd1_real, meta_for("sd1"), "fp16")
    rep = check_file(path)
    assert rep.family == "sd1" and rep.reference == "lora_keys/sd15.tsv"
    assert rep.verdict == "pass", rep.text()
    assert rep.modules == 264 and rep.scales == [0.5]


def _variant(sd, how):
    out = {}
    for k, v in sd.items():
        mod, suffix = k.split(".", 1)
        if how == "peft":
            if suffix == "alpha":
                continue
            comp = "unet" if mod.startswith("lora_unet_") else "text_encoder"
            out[f"{comp}.{mod.split('_', 2)[2]}.{'lora_A' if 'down' in suffix else 'lora_B'}.weight"] = v
        elif how == "te1":
            out[k.replace("lora_te_", "lora_te1_")] = v
        elif how == "proj2d":
            out[k] = v[:, :, 0, 0] if "proj_" in mod and v.dim() == 4 else v
        elif how == "no_alpha":
            if suffix != "alpha":
                out[k] = v
        elif how == "nan":
            out[k] = v.clone()
            if "attn1_to_q" in mod and "up" in suffix:
                out[k][0, 0] = float("nan")
        elif how == "lycoris":
            out[k.replace("lora_unet_", "lycoris_")] = v
    return out


@pytest.mark.parametrize("how,code", [("peft", "peft_keys"), ("te1", "te1_on_sd1"), ("proj2d", "bad_shape"),
                                      ("no_alpha", "missing_alpha"), ("nan", "non_finite"),
                                      ("lycoris", "lycoris_prefix")])
def test_classic_mistakes_are_flagged(sd1_real, tmp_path, how, code):
    path = tmp_path / f"{how}.safetensors"
    meta = meta_for("sd1", rank=1, alpha=0.5)  # trained at alpha 0.5 ≠ rank: a missing alpha changes the scale
    save_file({k: v.contiguous() for k, v in _variant(sd1_real, how).items()}, str(path), metadata=meta)
    rep = check_file(path)
    assert rep.verdict == "fail", rep.text()
    assert code in codes(rep), rep.text()
    reason = next(f.message for f in rep.findings if f.code == code)
    assert len(reason) > 20


def test_tiny_export_passes_with_base_and_dora_clients_reported(tmp_path):
    base = build_tiny("sdxl")
    build_network(base, NetworkSection(rank=2, alpha=1, use_dora=True, dora_axis="out", conv=True,
                                       train_text_encoder=True))
    path = tmp_path / "tiny.safetensors"
    save_tensors(path, kohya_tensors(base), meta_for("sdxl", 2, 1), "fp32")
    rep = check_file(path, base=build_tiny("sdxl"))
    assert rep.reference == "derived from the base model"
    assert {f.code for f in rep.findings if f.severity == "error"} == set(), rep.text()
    from trainer.adapter.dora import compatibility

    assert rep.dora_clients == {**{c: ok for c, (ok, _) in compatibility("out").items()}, "LoRA Atelier": True}
    assert rep.dora_clients["a1111"] is False and rep.dora_clients["diffusers"] is False
    assert rep.verdict == "warn" and codes(rep) == {"dora"}
    verdicts = {c["client"]: c["ok"] for c in rep.clients}
    assert verdicts == {"ComfyUI": False, "A1111/Forge": False, "sd-scripts": False, "diffusers": False}


def test_cli_json_and_exit_codes(sd1_real, tmp_path):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_tensors(good, sd1_real, meta_for("sd1"), "fp16")
    save_file({k: v.contiguous() for k, v in _variant(sd1_real, "te1").items()}, str(bad), metadata=meta_for("sd1"))
    run = [sys.executable, "-m", "trainer", "check"]
    ok = subprocess.run(run + [str(good), "--json"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "pass"
    ko = subprocess.run(run + [str(bad)], capture_output=True, text=True, timeout=300)
    assert ko.returncode == 1 and "te1_on_sd1" in ko.stdout and "FAIL" in ko.stdout


def test_duplicate_keys_make_the_file_fail(tmp_path):
    import struct

    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    header = ('{"lora_unet_x.alpha":' + entry + ',"lora_unet_x.alpha":' + entry + '}').encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<f", 1.0))
    rep = check_file(path)
    assert rep.verdict == "fail" and "duplicate key" in rep.findings[0].message


def test_column_dora_file_is_reported_for_a1111(tmp_path):
    base = build_tiny("sd1")
    build_network(base, NetworkSection(rank=2, alpha=1, use_dora=True, dora_axis="in"))
    path = tmp_path / "col.safetensors"
    save_tensors(path, kohya_tensors(base), meta_for("sd1", 2, 1), "fp32")
    rep = check_file(path, base=build_tiny("sd1"))
    assert rep.dora_clients["a1111"] is True and rep.dora_clients["diffusers"] is False
    assert "per input column" in next(f.message for f in rep.findings if f.code == "dora")
