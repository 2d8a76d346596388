"""Which family a base model is (sd1, sd2, sdxl) and what its UNet predicts (epsilon or v).

Single files are judged from tensor names and shapes alone, read from the safetensors header, so
detection loads no tensor. Both the original LDM/SGM names (model.diffusion_model.*,
cond_stage_model.*, conditioner.embedders.*) and diffusers names (down_blocks.*, text_encoder_2.*)
are understood.

v-prediction: an SD2 single file does not say whether it was trained for epsilon (2.x-base, 512 px)
or v (2.x, 768 px); both have identical tensors. `detect_prediction_type` decides, first match wins:
1. an explicit prediction_type ("epsilon" / "v_prediction") from the user;
2. a `v_pred` tensor in the file (the marker A1111 and ComfyUI read, used by v-pred SDXL fine-tunes);
3. ModelSpec metadata: `modelspec.prediction_type` ("v"/"epsilon"), or an architecture ending "-v"
   such as "stable-diffusion-v2-768-v";
4. SD2 only: a resolution hint of 768 px or more (the training resolution), or "768" in the file
   name (Stability's own file is v2-1_768-ema-pruned), means v; otherwise epsilon.
SD1 and SDXL default to epsilon.

Zero terminal SNR (the noise schedule rescaled so its last step is pure noise, Lin et al. 2023) is
decided by `detect_zero_terminal_snr`: an explicit "on"/"off" from the user; else a `ztsnr` tensor in
the file (NoobAI-XL v-pred carries `v_pred` and `ztsnr`, 0-dim, at the top level; ComfyUI reads both),
or `ss_zero_terminal_snr` = True in its metadata (sd-scripts fine-tunes). Otherwise off.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from trainer.formats.safetensors_io import read_header

FAMILY_BY_CROSS_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_CROSS_ATTN_K = re.compile(r"(^|\.)attn2\.to_k\.weight$")


class FamilyDetectionError(ValueError):
    """The weights are not SD1.x, SD2.x or SDXL base, or belong to a variant this trainer cannot use."""


def header_keys_and_shapes(path: str | Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """({tensor name: shape}, metadata) from a safetensors header; raises SafetensorsError if malformed."""
    hdr = read_header(path)
    return {k: tuple(v["shape"]) for k, v in hdr.tensors.items()}, hdr.metadata


def _in_channels(keys_and_shapes: dict[str, tuple]) -> int | None:
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "conv_in.weight", "unet.conv_in.weight"):
        shape = keys_and_shapes.get(key)
        if shape and len(shape) == 4:
            return shape[1]
    return None


def detect_family(keys_and_shapes: dict[str, tuple]) -> str:
    """"sd1", "sd2" or "sdxl" from tensor names and shapes (v-prediction is decided separately)."""
    keys = keys_and_shapes.keys()
    cross_dims = {shape[-1] for k, shape in keys_and_shapes.items() if _CROSS_ATTN_K.search(k) and shape}

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.0.model.") and not has("conditioner.embedders.1."):
        raise FamilyDetectionError("this is an SDXL refiner (one OpenCLIP encoder, no CLIP-L); train on SDXL base")
    in_ch = _in_channels(keys_and_shapes)
    if in_ch is not None and in_ch != 4:
        raise FamilyDetectionError(f"the UNet takes {in_ch} input channels (an inpainting or instruct-pix2pix model); "
                                   "only text-to-image bases with 4 latent channels are supported")

    by_text = None
    if (has("conditioner.embedders.1.model.") or has("text_encoder_2.")
            or any("label_emb.0.0.weight" in k or k.endswith("add_embedding.linear_1.weight") for k in keys)):
        by_text = "sdxl"
    elif has("cond_stage_model.model."):
        by_text = "sd2"  # OpenCLIP ViT-H
    elif has("cond_stage_model.transformer."):
        by_text = "sd1"  # CLIP ViT-L
    elif "text_encoder.text_model.embeddings.token_embedding.weight" in keys or \
            "text_encoder.embeddings.token_embedding.weight" in keys:
        width = (keys_and_shapes.get("text_encoder.text_model.embeddings.token_embedding.weight")
                 or keys_and_shapes["text_encoder.embeddings.token_embedding.weight"])[-1]
        by_text = {768: "sd1", 1024: "sd2"}.get(width)

    # The UNet's cross-attention width is what the adapter has to match, so it has the last word.
    known = {FAMILY_BY_CROSS_DIM[d] for d in cross_dims if d in FAMILY_BY_CROSS_DIM}
    if len(known) == 1:
        by_unet = known.pop()
        if by_text and by_text != by_unet:
            raise FamilyDetectionError(f"the text encoder looks like {by_text} but the UNet's cross-attention "
                                       f"width {sorted(cross_dims)} is {by_unet}'s; a mixed or broken checkpoint")
        return by_unet
    if by_text:
        return by_text  # e.g. small test models built in a family's shape with a narrower UNet
    if cross_dims:
        raise FamilyDetectionError(f"cross-attention width {sorted(cross_dims)} matches no supported family "
                                   f"(768 = SD1, 1024 = SD2, 2048 = SDXL)")
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise FamilyDetectionError(f"not a Stable Diffusion 1.x/2.x/XL checkpoint (no UNet cross-attention or CLIP "
                               f"text-encoder tensors; first keys: {sample})")


def detect_prediction_type(family: str, keys_and_shapes: dict[str, tuple] | None = None,
                           metadata: dict[str, str] | None = None, name: str = "",
                           resolution: int | None = None, override: str = "auto") -> str:
    """"epsilon" or "v_prediction"; the rules and their order are in this module's docstring."""
    if override not in ("auto", "", None):
        if override not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be auto, epsilon or v_prediction, not {override!r}")
        return override
    if family == "sd2-v":
        return "v_prediction"
    if keys_and_shapes and "v_pred" in keys_and_shapes:
        return "v_prediction"
    meta = metadata or {}
    spec_pred = meta.get("modelspec.prediction_type", "").strip().lower()
    if spec_pred in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if spec_pred in ("epsilon", "eps"):
        return "epsilon"
    if meta.get("modelspec.architecture", "").strip().lower().endswith("-v"):
        return "v_prediction"
    if family == "sd2" and ((resolution or 0) >= 768 or "768" in Path(name).name):
        return "v_prediction"
    return "epsilon"


def detect_zero_terminal_snr(keys_and_shapes: dict[str, tuple] | None = None,
                             metadata: dict[str, str] | None = None, override: str = "auto") -> bool:
    """Whether the model was trained with a zero-terminal-SNR schedule (rules: this module's docstring)."""
    if override not in ("auto", "", None):
        if override not in ("on", "off"):
            raise ValueError(f"zero_terminal_snr must be auto, on or off, not {override!r}")
        return override == "on"
    if keys_and_shapes and "ztsnr" in keys_and_shapes:
        return True
    return (metadata or {}).get("ss_zero_terminal_snr", "").strip().lower() == "true"


def family_name(family: str, prediction_type: str) -> str:
    """The FAMILIES entry: SD2 with v-prediction is "sd2-v"."""
    if family in ("sd2", "sd2-v"):
        return "sd2-v" if prediction_type == "v_prediction" else "sd2"
    return family


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise FamilyDetectionError(f"{path}: unreadable JSON ({e})") from None


def detect_family_from_folder(folder: str | Path) -> tuple[str, str]:
    """(family, scheduler prediction_type) of a diffusers pipeline folder, from its configs only.

    SD2 is told from SD1 by the text encoder's activation (OpenCLIP uses gelu, OpenAI CLIP quick_gelu),
    which also holds for small models built in the same shape; cross-attention width is the fallback."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    text = _read_json(folder / "text_encoder" / "config.json")
    sched = _read_json(folder / "scheduler" / "scheduler_config.json")
    pred = sched.get("prediction_type", "epsilon")
    if ("XL" in index.get("_class_name", "") or (index.get("text_encoder_2") or [None])[0]
            or unet.get("addition_embed_type") == "text_time"):
        return "sdxl", pred
    if unet.get("in_channels", 4) != 4:
        raise FamilyDetectionError(f"{folder}: the UNet takes {unet['in_channels']} input channels "
                                   "(inpainting or instruct-pix2pix); only 4-channel text-to-image bases are supported")
    act = text.get("hidden_act")
    if act in ("gelu", "quick_gelu"):
        return ("sd2" if act == "gelu" else "sd1"), pred
    fam = FAMILY_BY_CROSS_DIM.get(unet.get("cross_attention_dim"))
    if fam:
        return fam, pred
    raise FamilyDetectionError(f"{folder}: cannot tell the family from unet/config.json and text_encoder/config.json")
