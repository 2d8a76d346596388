"""Loading bases: diffusers folders, single-file LDM checkpoints, pickles, hub ids; family detection;
architecture-true random models. All offline, tiny models except the meta-device shape checks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.formats.safetensors_io import model_hash
from trainer.models.detect import (FamilyDetectionError, detect_family, detect_prediction_type,
                                   header_keys_and_shapes)
from trainer.models.loading import ModelLoadError, load_base
from trainer.models.random_arch import build_random
from trainer.models.tiny import build_tiny

# ---------------------------------------------------------------------------------------------
# diffusers -> original LDM/SGM single-file layout (what A1111/Civitai checkpoints use). diffusers
# ships only the other direction; its own converter reading these files back is the check.

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{_RESNET.get(head, head)}.{tail}"


def _unet_key(k: str, per_block: int, up_attn: set) -> str:
    n = per_block + 1
    for d, ldm in _UNET_TOP.items():
        if k.startswith(d + "."):
            return ldm + k[len(d):]
    if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
        side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        idx = i * n + j + 1 if side == "down" else i * n + j
        rest = _resnet(rest) if kind == "resnets" else rest
        return f"{'input' if side == 'down' else 'output'}_blocks.{idx}.{0 if kind == 'resnets' else 1}.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", k):
        i = int(m[1])
        return f"output_blocks.{i * n + per_block}.{2 if i in up_attn else 1}.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", k):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", k):
        return f"middle_block.1.{m[1]}"
    raise KeyError(k)


def _vae_key(k: str, n_blocks: int) -> str:
    k = k.replace("conv_norm_out", "norm_out")
    if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
        i = int(m[3]) if m[2] == "down" else n_blocks - 1 - int(m[3])
        return f"{m[1]}.{m[2]}.{i}.block.{m[4]}.{m[5].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", k):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", k):
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", k):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", k):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    return k


def _open_clip(sd: dict, prefix: str) -> dict:
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": sd.pop("final_layer_norm.bias")}
    hidden = out[prefix + "token_embedding.weight"].shape[1]
    proj = sd.pop("text_projection.weight", None)
    out[prefix + "text_projection"] = (proj.T if proj is not None else torch.eye(hidden)).contiguous()
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")}
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd.pop(src + f"self_attn.{p}_proj.{kind}")
                                                           for p in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{b}.{kind}"] = sd.pop(src + f"{a}.{kind}")
    assert not sd, f"unmapped text-encoder keys: {sorted(sd)[:5]}"
    return out


def to_ldm(unet, vae, text_encoders, family: str) -> dict:
    per_block = unet.config.layers_per_block
    up_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    out = {"model.diffusion_model." + _unet_key(k, per_block, up_attn): v for k, v in unet.state_dict().items()}
    n_vae = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        key = _vae_key(k, n_vae)
        out["first_stage_model." + key] = v[:, :, None, None] if ".mid.attn_1." in key and v.ndim == 2 else v
    te_sd = [{k.removeprefix("text_model."): v for k, v in te.state_dict().items()} for te in text_encoders]
    if family == "sdxl":
        out.update({"conditioner.embedders.0.transformer.text_model." + k: v for k, v in te_sd[0].items()})
        out.update(_open_clip(text_encoders[1].state_dict(), "conditioner.embedders.1.model."))
    elif family.startswith("sd2"):
        out.update(_open_clip(te_sd[0], "cond_stage_model.model."))
    else:
        out.update({"cond_stage_model.transformer.text_model." + k: v for k, v in te_sd[0].items()})
    return out


def _config_only_copy(base, folder: Path) -> Path:
    """The tiny pipeline's configs without any weights: what the bundled configs are for real models."""
    base.save_pretrained(folder)
    for f in list(folder.rglob("*.safetensors")):
        f.unlink()
    return folder


def _unet_out(base, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx_dim = base.unet.config.cross_attention_dim
    ctx = torch.randn(1, 77, ctx_dim, generator=g)
    kwargs = {}
    if base.is_sdxl:
        pooled = base.unet.config.projection_class_embeddings_input_dim - 6 * base.unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return base.unet(x, torch.tensor([500]), encoder_hidden_states=ctx, **kwargs).sample


def _text_out(base) -> list[torch.Tensor]:
    with torch.no_grad():
        return [te(tok("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
                for te, tok in zip(base.text_encoders, base.tokenizers)]


def _vae_out(base) -> torch.Tensor:
    with torch.no_grad():
        return base.vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))).sample


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_diffusers_folder_round_trip(tmp_path, family):
    tiny = build_tiny(family)
    folder = tmp_path / f"my-{family}"
    tiny.save_pretrained(folder)
    base = load_base(str(folder))
    assert base.family == family
    assert base.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")
    assert type(base.scheduler).__name__ == "DDPMScheduler"
    assert base.scheduler.config.prediction_type == base.prediction_type
    assert base.name == f"my-{family}" and base.source == str(folder) and base.model_hash == ""
    want = tiny.unet.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in base.unet.state_dict().items())
    # same weights; a loaded (mmap-backed) tensor can take a different kernel path, hence ~1e-6
    assert torch.allclose(_unet_out(base), _unet_out(tiny), atol=1e-5)
    assert not any(p.requires_grad for p in base.unet.parameters())


def _tiny_for_single_file(family: str, seed: int):
    """build_tiny, except that SDXL's two text encoders get different widths (32 and 48): diffusers'
    single-file loader tells CLIP-L from OpenCLIP-bigG by width, as they are in the real model."""
    tiny = build_tiny(family, seed=seed)
    if family != "sdxl":
        return tiny
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from trainer.models.tiny import _text_config

    tiny.text_encoders[1] = CLIPTextModelWithProjection(_text_config(48, 3, act="gelu"))
    cfg = dict(tiny.unet.config, cross_attention_dim=32 + 48, projection_class_embeddings_input_dim=8 * 6 + 48)
    tiny.unet = UNet2DConditionModel.from_config(cfg)
    return tiny


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_single_file_ldm_checkpoint_loads_offline(tmp_path, family):
    tiny = _tiny_for_single_file(family, seed=3)
    ckpt = tmp_path / f"tiny_{family}_model.safetensors"
    sd = to_ldm(tiny.unet, tiny.vae, tiny.text_encoders, family)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    configs = _config_only_copy(tiny, tmp_path / "configs")
    shapes, _ = header_keys_and_shapes(ckpt)
    assert detect_family(shapes) == family.removesuffix("-v")

    if family == "sd2-v":  # the same file read as the 512 px epsilon family when the user says so
        assert load_base(str(ckpt), family="sd2", config_dir=configs, resolution=768).prediction_type == "epsilon"
    base = load_base(str(ckpt), config_dir=configs, resolution=768 if family == "sd2-v" else 512)
    assert base.family == family
    assert base.prediction_type == ("v_prediction" if family == "sd2-v" else "epsilon")
    assert base.name == ckpt.stem and base.source == str(ckpt)
    assert base.model_hash == model_hash(ckpt) and len(base.model_hash) == 64
    assert torch.allclose(_unet_out(base), _unet_out(tiny), atol=1e-5)
    assert torch.allclose(_vae_out(base), _vae_out(tiny), atol=1e-5)
    for got, want in zip(_text_out(base), _text_out(tiny)):
        assert torch.allclose(got, want, atol=1e-5)
    # the pad token the family's text encoder was trained with
    pads = [t.pad_token for t in base.tokenizers]
    assert pads == {"sd1": ["<|endoftext|>"], "sd2-v": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]


def test_weights_only_pickle_checkpoint_loads(tmp_path):
    tiny = build_tiny("sd1", seed=5)
    ckpt = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": to_ldm(tiny.unet, tiny.vae, tiny.text_encoders, "sd1")}, ckpt)
    base = load_base(str(ckpt), config_dir=_config_only_copy(tiny, tmp_path / "configs"))
    assert base.family == "sd1" and base.name == "legacy"
    assert torch.allclose(_unet_out(base), _unet_out(tiny), atol=1e-5)


class _Payload:
    """Unpickling this would create a file: the stand-in for any code a malicious checkpoint runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_malicious_pickle_is_refused_without_running(tmp_path, suffix):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1), "payload": _Payload(marker)}}, evil)
    assert not marker.exists()
    with pytest.raises(ModelLoadError) as err:
        load_base(str(evil))
    assert str(evil) in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()


def test_custom_code_in_model_index_is_refused(tmp_path):
    folder = tmp_path / "custom"
    build_tiny("sd1").save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    marker = tmp_path / "ran.txt"
    (folder / "unet" / "evil_unet.py").write_text(f"open({str(marker)!r}, 'w')\nclass EvilUNet: pass\n")
    with pytest.raises(ModelLoadError, match="custom model code is never run"):
        load_base(str(folder))
    assert not marker.exists()


def test_errors_name_the_path_and_reason(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ModelLoadError, match="no such file or folder") as err:
        load_base(str(missing))
    assert str(missing) in str(err.value)

    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelLoadError, match="corrupt") as err:
        load_base(str(corrupt))
    assert str(corrupt) in str(err.value)

    odd = tmp_path / "model.gguf"
    odd.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="unsupported model file type"):
        load_base(str(odd))

    not_sd = tmp_path / "flux_like.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(not_sd))
    with pytest.raises(ModelLoadError, match="unknown model family") as err:
        load_base(str(not_sd))
    assert str(not_sd) in str(err.value)

    plain = tmp_path / "plain_folder"
    plain.mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_base(str(plain))

    folder = tmp_path / "sd1"
    build_tiny("sd1").save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="weights are sd1"):
        load_base(str(folder), family="sdxl")


def test_hub_id_offline_says_it_needs_internet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_base("atelier-tests/no-such-model-here")
    msg = str(err.value)
    assert msg.startswith("atelier-tests/no-such-model-here:")
    assert "offline" in msg and "internet" in msg and "local copy" in msg


def test_builtin_shapes_resolves_to_the_assets_folder(monkeypatch, tmp_path):
    import trainer.models.loading as loading

    monkeypatch.setitem(loading.BUILTINS, "builtin:shapes", tmp_path / "shapes_base")
    with pytest.raises(ModelLoadError, match="builtin:shapes: the bundled demo base is missing"):
        load_base("builtin:shapes")
    build_tiny("sd1").save_pretrained(tmp_path / "shapes_base")
    base = load_base("builtin:shapes")
    assert base.name == "shapes" and base.source == "builtin:shapes" and base.family == "sd1"
    with pytest.raises(ModelLoadError, match="unknown built-in"):
        load_base("builtin:nothing")


def test_separate_vae_folder_replaces_the_checkpoint_vae(tmp_path):
    folder = tmp_path / "base"
    build_tiny("sd1", seed=0).save_pretrained(folder)
    other = build_tiny("sd1", seed=7)
    other.vae.save_pretrained(tmp_path / "my_vae")
    base = load_base(str(folder), vae=str(tmp_path / "my_vae"))
    assert torch.equal(_vae_out(base), _vae_out(other))
    with pytest.raises(ModelLoadError, match="VAE not found"):
        load_base(str(folder), vae=str(tmp_path / "absent_vae"))


# --- architecture-true models on the meta device ------------------------------------------------

def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_architecture_true_parameter_counts():
    sd1 = build_random("sd1", parts=("unet", "vae", "text_encoder"))
    assert next(sd1["unet"].parameters()).device.type == "meta"
    assert _params(sd1["unet"]) == 859_520_964
    assert _params(sd1["vae"]) == 83_653_863
    assert _params(sd1["text_encoder"]) == 123_060_480  # CLIP ViT-L/14 text
    assert _params(build_random("sd2", parts=("text_encoder",))["text_encoder"]) == 340_387_840  # OpenCLIP-H, 23 layers
    sdxl = build_random("sdxl", parts=("unet", "text_encoder_2"))
    assert _params(sdxl["unet"]) == 2_567_463_684
    assert _params(sdxl["text_encoder_2"]) == 694_659_840  # OpenCLIP bigG with projection
    assert sdxl["unet"].down_blocks[2].attentions[0].transformer_blocks[9].attn2.to_k.weight.shape == (1280, 2048)


@pytest.mark.parametrize("family,diffusers_type", [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_detection_on_real_architecture_key_sets(family, diffusers_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    parts = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ())
    models = build_random(family, parts=parts)
    tes = [models["text_encoder"]] + ([models["text_encoder_2"]] if family == "sdxl" else [])
    ldm = to_ldm(models["unet"], models["vae"], tes, family)
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    assert detect_family(shapes) == family
    assert infer_diffusers_model_type(ldm) == diffusers_type  # diffusers reads our LDM names the same way
    diffusers_keys = {f"unet.{k}": tuple(v.shape) for k, v in models["unet"].state_dict().items()}
    assert detect_family(diffusers_keys) == family
    unet_only = {k: s for k, s in shapes.items() if k.startswith("model.diffusion_model.")}
    assert detect_family(unet_only) == family


def test_detection_refuses_variants_it_cannot_train():
    with pytest.raises(FamilyDetectionError, match="refiner"):
        detect_family({"conditioner.embedders.0.model.positional_embedding": (77, 1280),
                       "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3)})
    with pytest.raises(FamilyDetectionError, match="9 input channels"):
        detect_family({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
                       "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)})
    with pytest.raises(FamilyDetectionError, match="mixed or broken"):
        detect_family({"cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
                       "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)})


def test_display_names_never_hold_a_path(tmp_path):
    from trainer.models.loading import display_name

    (tmp_path / "sd-v1.5").mkdir()
    assert display_name(str(tmp_path / "sd-v1.5")) == "sd-v1.5"
    assert display_name(str(tmp_path / "models" / "dreamy_v2.safetensors")) == "dreamy_v2"
    assert display_name("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert display_name("builtin:shapes") == "shapes"


def test_prediction_type_rules():
    sd2 = {"cond_stage_model.model.token_embedding.weight": (49408, 1024)}
    assert detect_prediction_type("sd2", sd2) == "epsilon"
    assert detect_prediction_type("sd2", sd2, resolution=768) == "v_prediction"
    assert detect_prediction_type("sd2", sd2, name="v2-1_768-ema-pruned.safetensors") == "v_prediction"
    assert detect_prediction_type("sd2", sd2, resolution=768, override="epsilon") == "epsilon"
    assert detect_prediction_type("sd2", sd2, {"modelspec.architecture": "stable-diffusion-v2-768-v"}) == "v_prediction"
    assert detect_prediction_type("sd2", sd2, {"modelspec.prediction_type": "epsilon"}, resolution=768) == "epsilon"
    assert detect_prediction_type("sdxl", {"v_pred": (0,)}) == "v_prediction"
    assert detect_prediction_type("sd1", {}, resolution=768) == "epsilon"
    with pytest.raises(ValueError):
        detect_prediction_type("sd1", {}, override="x0")
