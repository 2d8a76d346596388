"""kohya module names for the layers of a Base (docs/adapter-format.md, "Module names").

A kohya name is `<prefix>_<module path with "." → "_">`:
- SD1.x/SD2.x UNet: `lora_unet_` + the diffusers path;
- SDXL UNet: `lora_unet_` + the SGM/LDM path (input_blocks / middle_block / output_blocks), computed
  from the UNet config so that tiny SDXL-shaped UNets get the same rules as the real one;
- text encoders: `lora_te_` (SD1/SD2) or `lora_te1_`/`lora_te2_` (SDXL) + `text_model_encoder_layers_…`,
  always with the `text_model` level (transformers 5 dropped it from CLIPTextModel's module names, the
  format did not).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

UNET_PREFIX = "lora_unet"
_TE_TAIL = re.compile(r"(?:^|\.)((?:encoder\.layers\.\d+|final_layer_norm|embeddings)(?:\..+)?)$")
_RESNET_INNER = {"conv1": "in_layers.2", "norm1": "in_layers.0", "conv2": "out_layers.3", "norm2": "out_layers.0",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_SGM_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
            "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


class NamingError(ValueError):
    pass


def te_prefixes(family: str) -> list[str]:
    return ["lora_te1", "lora_te2"] if family == "sdxl" else ["lora_te"]


def te_kohya_name(path: str, index: int, family: str) -> str:
    """`encoder.layers.3.self_attn.q_proj` or `text_model.encoder.layers.3…` → `lora_te…_text_model_encoder_…`."""
    m = _TE_TAIL.search(path)
    if not m:
        raise NamingError(f"text-encoder module {path!r} has no kohya name")
    prefixes = te_prefixes(family)
    if index >= len(prefixes):
        raise NamingError(f"family {family!r} has {len(prefixes)} text encoder(s), not {index + 1}")
    return f"{prefixes[index]}_text_model_{m.group(1).replace('.', '_')}"


def _as_dict(config) -> dict:
    return dict(config) if not isinstance(config, dict) else config


def sgm_block_map(unet_config) -> dict[str, str]:
    """diffusers block prefix → SGM block prefix, from layers_per_block and the block types (the final
    down block has no downsampler, the final up block no upsampler; upsamplers sit after the
    attentions when the up block has them)."""
    cfg = _as_dict(unet_config)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    lpb = cfg["layers_per_block"]
    lpbs = [lpb] * len(down) if isinstance(lpb, int) else list(lpb)
    out: dict[str, str] = {}
    idx = 1
    for i, kind in enumerate(down):
        for j in range(lpbs[i]):
            out[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
            if "CrossAttn" in kind:
                out[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
            idx += 1
        if i < len(down) - 1:
            out[f"down_blocks.{i}.downsamplers.0"] = f"input_blocks.{idx}.0"
            idx += 1
    out["mid_block.resnets.0"] = "middle_block.0"
    out["mid_block.attentions.0"] = "middle_block.1"
    out["mid_block.resnets.1"] = "middle_block.2"
    rev = list(reversed(lpbs))
    idx = 0
    for i, kind in enumerate(up):
        attn = "CrossAttn" in kind
        for j in range(rev[i] + 1):
            out[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{idx}.0"
            if attn:
                out[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{idx}.1"
            idx += 1
        if i < len(up) - 1:
            out[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{idx - 1}.{2 if attn else 1}"
    return out


def sgm_path(path: str, block_map: dict[str, str]) -> str:
    """A diffusers UNet module path in SGM/LDM spelling."""
    if path in _SGM_TOP:
        return _SGM_TOP[path]
    parts = path.split(".")
    for n in (4, 3):  # "down_blocks.1.resnets.0" / "mid_block.resnets.0"
        prefix = ".".join(parts[:n])
        if prefix in block_map:
            rest = parts[n:]
            head = block_map[prefix]
            if ".resnets." in f".{prefix}." and rest:
                rest = _RESNET_INNER.get(rest[0], rest[0]).split(".") + rest[1:]
            elif "downsamplers" in prefix and rest == ["conv"]:
                rest = ["op"]
            return ".".join([head, *rest])
    raise NamingError(f"UNet module {path!r} has no SGM name")


def unet_kohya_name(path: str, family: str, block_map: dict[str, str] | None = None) -> str:
    if family == "sdxl":
        if block_map is None:
            raise NamingError("SDXL names need the UNet's SGM block map")
        path = sgm_path(path, block_map)
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


@dataclass
class Site:
    """One adaptable layer of the base and its kohya name."""
    kohya: str
    component: str  # "unet", "te0", "te1"
    path: str  # module path inside the component (diffusers / transformers spelling)
    module: torch.nn.Module


def components(base) -> list[tuple[str, torch.nn.Module]]:
    return [("unet", base.unet)] + [(f"te{i}", te) for i, te in enumerate(base.text_encoders)]


def kohya_name(base, component: str, path: str, block_map: dict | None = None) -> str:
    if component == "unet":
        if base.family == "sdxl" and block_map is None:
            block_map = sgm_block_map(base.unet.config)
        return unet_kohya_name(path, base.family, block_map)
    return te_kohya_name(path, int(component[2:]), base.family)


def _strip_peft(path: str) -> str:
    return path.replace(".base_layer", "")


def all_sites(base, only=None) -> dict[str, Site]:
    """kohya name → Site for every Linear / Conv2d of the UNet and the text encoders' transformer
    layers (plain or already wrapped by peft). `only(component, path, module)` filters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    block_map = sgm_block_map(base.unet.config) if base.family == "sdxl" else None
    out: dict[str, Site] = {}
    for comp, model in components(base):
        for path, mod in model.named_modules():
            if isinstance(mod, BaseTunerLayer):
                pass
            elif not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or ".base_layer" in path or \
                    any(s in path for s in (".lora_", ".hada_", ".lokr_")):
                continue
            if comp != "unet" and not re.search(r"(?:^|\.)encoder\.layers\.\d+\.", path):
                continue
            if only is not None and not only(comp, path, mod):
                continue
            try:
                name = kohya_name(base, comp, _strip_peft(path), block_map)
            except NamingError:
                continue
            if name in out:
                raise NamingError(f"two modules map to the kohya name {name}: {out[name].path} and {path}")
            out[name] = Site(name, comp, path, mod)
    return out


def adapted_sites(base) -> dict[str, Site]:
    """kohya name → Site for every peft adapter layer injected into the base."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return all_sites(base, only=lambda c, p, m: isinstance(m, BaseTunerLayer))


def diffusers_alias(site: Site, family: str) -> str | None:
    """The diffusers-path spelling of an SDXL UNet name (clients accept it; Civitai has such files)."""
    if site.component == "unet" and family == "sdxl":
        return f"{UNET_PREFIX}_{_strip_peft(site.path).replace('.', '_')}"
    return None
