"""Exported kohya names and shapes equal the reference tables (real SD1.5 / SDXL architectures, meta
device) and follow the same rules on the tiny models."""
import re

import pytest
import torch

from trainer.config import NetworkSection
from trainer.formats.expected import derive_from_model, read_table
from trainer.formats.kohya_export import kohya_tensors
from trainer.models.base import Base
from trainer.models.random_arch import build_random
from trainer.models.tiny import build_tiny
from trainer.adapter.network import build_network


def real_base(family):
    parts = ("unet", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ())
    m = build_random(family, parts, device="meta")
    return Base(family=family, unet=m["unet"], vae=None, text_encoders=[m[p] for p in parts[1:]],
                tokenizers=[], scheduler=None)


def exported_modules(sd):
    """module name → (lora_down shape, lora_up shape)."""
    mods = {}
    for k, t in sd.items():
        name, suffix = k.split(".", 1)
        mods.setdefault(name, {})[suffix] = tuple(t.shape)
    return mods


def assert_shapes_match(mods, table, names):
    for name in names:
        want = table[name].weight_shape
        down, up = mods[name]["lora_down.weight"], mods[name]["lora_up.weight"]
        assert mods[name]["alpha"] == ()
        assert len(down) == len(want) and len(up) == len(want), name  # 4-D for every conv incl. 1×1
        assert up[0] == want[0] and down[1] == want[1], name
        if len(want) == 4:
            assert down[2:] == want[2:] and up[2:] == (1, 1), name
        assert down[0] == up[1]


@pytest.mark.parametrize("family,ref", [("sd1", "sd15"), ("sdxl", "sdxl")])
@pytest.mark.parametrize("conv", [False, True])
def test_real_architecture_export_equals_reference_table(family, ref, conv):
    base = real_base(family)
    with torch.device("meta"):
        build_network(base, NetworkSection(rank=8, alpha=4, conv=conv, conv_rank=4, conv_alpha=2,
                                           train_text_encoder=True))
    mods = exported_modules(kohya_tensors(base))
    table = read_table(ref)
    # SDXL reads text encoder 1's penultimate layer: its last layer gets no adapter (6 modules fewer
    # than sd-scripts' table, which writes them all-zero)
    want = {n for n, e in table.items() if (e.target == "default" or conv)
            and not n.startswith("lora_te1_text_model_encoder_layers_11_")}
    assert set(mods) == want
    assert len(want) == {("sd15", False): 264, ("sd15", True): 350, ("sdxl", False): 980,
                         ("sdxl", True): 1046}[(ref, conv)]
    assert_shapes_match(mods, table, want)
    # conv adapters carry their own rank
    for n in want:
        r = mods[n]["lora_down.weight"][0]
        assert r == (4 if table[n].target == "locon" else 8), n


@pytest.mark.parametrize("family,ref", [("sd1", "sd15"), ("sdxl", "sdxl")])
def test_model_derived_expectation_equals_table(family, ref):
    assert derive_from_model(real_base(family)) == read_table(ref)


UNET_RULE = {"sd1": r"lora_unet_(down_blocks_\d+|mid_block|up_blocks_\d+)_(attentions|resnets|downsamplers|upsamplers)_\d+_",
             "sd2-v": r"lora_unet_(down_blocks_\d+|mid_block|up_blocks_\d+)_(attentions|resnets|downsamplers|upsamplers)_\d+_",
             "sdxl": r"lora_unet_(input_blocks_\d+_\d+|middle_block_\d+|output_blocks_\d+_\d+)_"}


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_tiny_models_follow_the_same_rules(family):
    base = build_tiny(family)
    build_network(base, NetworkSection(rank=2, alpha=1, conv=True, conv_rank=2, conv_alpha=1,
                                       train_text_encoder=True))
    mods = exported_modules(kohya_tensors(base))
    last_te1 = f"lora_te1_text_model_encoder_layers_{base.text_encoders[0].config.num_hidden_layers - 1}_"
    expected = {n: e for n, e in derive_from_model(base).items()
                if not (family == "sdxl" and n.startswith(last_te1))}  # feeds nothing in SDXL
    assert set(mods) == set(expected)
    assert_shapes_match(mods, expected, expected)
    te_prefix = ("lora_te1_", "lora_te2_") if family == "sdxl" else ("lora_te_",)
    for name in mods:
        if name.startswith("lora_unet_"):
            assert re.match(UNET_RULE[family], name), name
        else:
            assert name.startswith(te_prefix) and "_text_model_encoder_layers_" in name, name
    if family == "sd1":  # conv proj_in/proj_out stay 4-D
        assert mods["lora_unet_down_blocks_0_attentions_0_proj_in"]["lora_down.weight"][2:] == (1, 1)
    if family == "sdxl":  # tiny SDXL: DownBlock2D then CrossAttn, two layers per block
        assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k" in mods
        assert "lora_unet_input_blocks_3_0_op" in mods
        assert "lora_unet_output_blocks_2_2_conv" in mods
        assert "lora_unet_middle_block_1_proj_in" in mods
        assert not any(n.startswith("lora_te_") for n in mods)
