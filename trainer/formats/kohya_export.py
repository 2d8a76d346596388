"""peft adapters on a Base → kohya / LyCORIS tensors (docs/adapter-format.md, "Tensors").

Every client computes W + multiplier·(alpha/dim)·ΔW with dim read from the file's own tensors, so
`alpha` is written per module as peft's training scale × that dim. diffusers, however, turns per-module
ranks and alphas into peft rank/alpha patterns, which some versions mis-assign or drop; so within each
group of modules (attention/MLP/text encoder; LoCon convs) the file has one rank and one alpha:
AdaLoRA's pruned ranks and LoftQ's rank-2r correction are zero-padded to the group's largest rank and
any other per-module scale is folded into lora_up (exact). Works on meta tensors (names and shapes only).
"""
from __future__ import annotations

import torch

from collections import Counter

from trainer.formats.names import Site, adapted_sites
from trainer.adapter.network import ADAPTER, UNET_CONV, matches


class ExportError(ValueError):
    pass


def training_scale(layer, adapter: str = ADAPTER) -> float:
    """The scale the layer trained with (set_adapter_scale's preview strength excluded)."""
    scaling = layer.__dict__.get("_atelier_scale0") or layer.scaling
    return float(scaling[adapter])


def _alpha(value: float) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def _weight_shape(layer) -> torch.Size:
    base = layer.get_base_layer()
    if type(base.weight).__name__ == "Params4bit":  # packed 4-bit codes (QLoRA): the logical shape
        return torch.Size((base.out_features, base.in_features))
    return base.weight.shape


def _lora(site: Site, adapter: str) -> dict[str, torch.Tensor]:
    from peft.tuners.adalora.layer import AdaLoraLayer

    layer, n = site.module, site.kohya
    if isinstance(layer, AdaLoraLayer):
        return _adalora(site, adapter)
    down = layer.lora_A[adapter].weight.detach()
    up = layer.lora_B[adapter].weight.detach()
    if layer.lora_B[adapter].bias is not None:
        raise ExportError(f"{n}: LoRA with a bias (lora_bias=True) has no kohya form")
    from trainer.adapter.dora import dora_scale_tensor
    from trainer.adapter.quantize import loftq_export_factors

    # a LoftQ start is the 4-bit base's correction: clients add the file to the full-precision W
    down, up = loftq_export_factors(layer, adapter, down, up)
    r = down.shape[0]
    w = _weight_shape(layer)
    if len(w) == 4 and down.dim() == 2:  # a Linear-style adapter on a 1×1 conv
        down, up = down[:, :, None, None], up[:, :, None, None]
    out = {f"{n}.lora_down.weight": down, f"{n}.lora_up.weight": up,
           f"{n}.alpha": _alpha(training_scale(layer, adapter) * r)}
    dora_scale = dora_scale_tensor(layer, adapter)  # [out, 1, …] (peft, LyCORIS) or [1, in, …] (A1111)
    if dora_scale is not None:
        out[f"{n}.dora_scale"] = dora_scale
    return out


def _adalora(site: Site, adapter: str) -> dict[str, torch.Tensor]:
    layer, n = site.module, site.kohya
    a, b, e = layer.lora_A[adapter].detach(), layer.lora_B[adapter].detach(), layer.lora_E[adapter].detach()
    scale = float(layer.scaling[adapter]) / (float(layer.ranknum[adapter]) + 1e-5)
    w = _weight_shape(layer)
    keep = (e.reshape(-1) != 0).nonzero().reshape(-1) if not e.is_meta else torch.arange(e.shape[0])
    if keep.numel() == 0:
        return {}  # AdaLoRA pruned every rank: the module adds nothing
    down = (a * e)[keep]
    up = b[:, keep]
    if len(w) == 4:
        down = down.reshape(len(keep), w[1], w[2], w[3])
        up = up.reshape(w[0], len(keep), 1, 1)
    return {f"{n}.lora_down.weight": down, f"{n}.lora_up.weight": up,
            f"{n}.alpha": _alpha(scale * len(keep))}


def _loha(site: Site, adapter: str) -> dict[str, torch.Tensor]:
    layer, n = site.module, site.kohya
    out = {}
    for key in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"):
        pdict = getattr(layer, key)
        if adapter in pdict:
            out[f"{n}.{key}"] = pdict[adapter].detach()
    r = layer.r[adapter]  # clients take dim from hada_w1_b.shape[0], which is r
    out[f"{n}.alpha"] = _alpha(training_scale(layer, adapter) * r)
    return out


def _lokr(site: Site, adapter: str) -> dict[str, torch.Tensor]:
    layer, n = site.module, site.kohya
    out = {}
    for key in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
        pdict = getattr(layer, key)
        if adapter in pdict:
            out[f"{n}.{key}"] = pdict[adapter].detach()
    scale = training_scale(layer, adapter)
    r = layer.r[adapter]
    if f"{n}.lokr_w1_b" in out or f"{n}.lokr_w2_b" in out:
        out[f"{n}.alpha"] = _alpha(scale * r)
    else:
        # both factors full: A1111 and ComfyUI then apply scale 1 whatever alpha says, so the
        # scale goes into w1
        out[f"{n}.lokr_w1"] = out[f"{n}.lokr_w1"] * scale
        out[f"{n}.alpha"] = _alpha(r)
    return out


def algo_of(layer) -> str:
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer
    from peft.tuners.lora.layer import LoraLayer

    if isinstance(layer, LoHaLayer):
        return "loha"
    if isinstance(layer, LoKrLayer):
        return "lokr"
    if isinstance(layer, LoraLayer):
        return "lora"
    raise ExportError(f"adapter type {type(layer).__name__} has no kohya/LyCORIS form")


def kohya_tensors(base, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """All adapter tensors of the base under kohya / LyCORIS names (detached, original dtype)."""
    sites = adapted_sites(base)
    if not sites:
        raise ExportError("the base has no adapter layers (was build_network called?)")
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, list[str]] = {}
    for site in sites.values():
        algo = algo_of(site.module)
        out.update({"lora": _lora, "loha": _loha, "lokr": _lokr}[algo](site, adapter))
        if f"{site.kohya}.lora_down.weight" in out:
            groups.setdefault(module_group(site), []).append(site.kohya)
    for names in groups.values():
        uniform_rank_and_alpha(out, names)
    return out


def module_group(site: Site) -> str:
    """"locon" for the UNet's ResNet convs / time embeddings / samplers (their own rank), else "default"."""
    path = site.path.replace(".base_layer", "")
    return "locon" if site.component == "unet" and matches(UNET_CONV, path) else "default"


def uniform_rank_and_alpha(tensors: dict[str, torch.Tensor], names: list[str]) -> None:
    """Give the LoRA modules `names` one rank and one alpha, in place, without changing any ΔW: pad
    lora_down/lora_up with zero rows/columns to the largest rank, and fold each module's scale relative to
    the most common one into lora_up."""
    if not names:
        return
    ranks = {n: tensors[f"{n}.lora_down.weight"].shape[0] for n in names}
    scales = {n: float(tensors[f"{n}.alpha"]) / ranks[n] for n in names}
    if len(set(ranks.values())) == 1 and len({round(v, 9) for v in scales.values()}) == 1:
        return
    top = max(ranks.values())
    common = Counter(round(v, 9) for v in scales.values()).most_common(1)[0][0]
    for n in names:
        down, up = tensors[f"{n}.lora_down.weight"], tensors[f"{n}.lora_up.weight"]
        pad = top - ranks[n]
        if pad:
            down = torch.cat([down, down.new_zeros((pad, *down.shape[1:]))], dim=0)
            up = torch.cat([up, up.new_zeros((up.shape[0], pad, *up.shape[2:]))], dim=1)
        if round(scales[n], 9) != common:
            up = up * (scales[n] / common) if not up.is_meta else up
        tensors[f"{n}.lora_down.weight"], tensors[f"{n}.lora_up.weight"] = down, up
        tensors[f"{n}.alpha"] = _alpha(common * top)


def file_rank_and_alpha(tensors: dict[str, torch.Tensor]) -> tuple[int, float] | None:
    """(rank, alpha) most modules of a kohya file have: what ss_network_dim / ss_network_alpha describe."""
    pairs = Counter()
    for key, t in tensors.items():
        if key.endswith(".lora_down.weight"):
            mod = key[: -len(".lora_down.weight")]
            if f"{mod}.alpha" in tensors:
                pairs[(t.shape[0], float(tensors[f"{mod}.alpha"]))] += 1
    return pairs.most_common(1)[0][0] if pairs else None

