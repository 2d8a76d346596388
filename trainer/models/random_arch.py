"""Architecture-true SD1.5 / SD2.1 / SDXL models with random weights, from the bundled configs.

For format tests (real module names and shapes) and benchmarks (real speed and memory). On the
meta device nothing is allocated, so SDXL's 2.6 B-parameter UNet costs no RAM; on "cpu" the weights
are real (random) tensors: ~3.4 GB for the SD1.5 UNet in fp32, ~10 GB for SDXL's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.models.base import ASSETS, FAMILIES

CONFIGS = ASSETS / "configs"
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def family_config_dir(family: str) -> Path:
    """The bundled diffusers config folder of a family (model_index.json, unet/, vae/, …)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return CONFIGS / family


def component_config(family: str, part: str) -> dict:
    folder = family_config_dir(family) / part
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    path = folder / name
    if not path.is_file():
        raise ValueError(f"family {family!r} has no {part!r} (no {path})")
    return json.loads(path.read_text(encoding="utf-8"))


def _build(family: str, part: str):
    cfg = component_config(family, part)
    if part == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(cfg)
    if part == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(cfg)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if cfg["architectures"] == ["CLIPTextModelWithProjection"] else CLIPTextModel
    return cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))


def build_random(family: str, parts=("unet",), device: str | torch.device = "meta",
                 dtype: torch.dtype = torch.float32) -> dict:
    """{part: model} for the requested parts ("unet", "vae", "text_encoder", "text_encoder_2"), random
    weights, in eval mode. device="meta" builds shapes only (no memory, no forward pass)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; expected some of {PARTS}")
    out = {}
    for part in parts:
        with torch.device(device):
            model = _build(family, part)
        if dtype != torch.float32:  # .to() on a diffusers model warns even when it changes nothing
            model = model.to(dtype=dtype)
        out[part] = model.eval()
    return out


# SDXL's OpenCLIP-G text encoder is 695 M parameters (2.8 GB in fp32); with the text cache on it runs
# once per caption, never per step, so the benchmark base keeps its width (real output shapes) and
# only this many of its 32 layers.
SDXL_TE2_BENCH_LAYERS = 2


def build_random_base(family: str, seed: int = 0, te2_layers: int | None = SDXL_TE2_BENCH_LAYERS):
    """A whole Base of the real architecture with random weights (the `random:<family>` model spec):
    real UNet, VAE and text encoders from the bundled configs, the real tokenizer and training schedule.
    For SDXL the second text encoder keeps `te2_layers` layers (None = all 32)."""
    from trainer.models.base import Base, load_clip_tokenizer
    from trainer.models.tiny import noise_scheduler

    torch.manual_seed(seed)
    parts = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if family == "sdxl" else ())
    if family == "sdxl" and te2_layers is not None:
        parts = parts[:-1]
    built = build_random(family, parts, device="cpu")
    encoders = [built["text_encoder"]]
    if family == "sdxl":
        if te2_layers is None:
            encoders.append(build_random(family, ("text_encoder_2",), device="cpu")["text_encoder_2"])
        else:
            from transformers import CLIPTextConfig, CLIPTextModelWithProjection

            cfg = component_config(family, "text_encoder_2")
            cfg = {k: v for k, v in cfg.items() if k != "architectures"}
            cfg["num_hidden_layers"] = te2_layers
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**cfg)).eval())
    pads = {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sd2-v": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]
    pred = "v_prediction" if family == "sd2-v" else "epsilon"
    return Base(family=family, unet=built["unet"], vae=built["vae"], text_encoders=encoders,
                tokenizers=[load_clip_tokenizer(p) for p in pads], scheduler=noise_scheduler(pred),
                prediction_type=pred, name=f"random-{family}")
