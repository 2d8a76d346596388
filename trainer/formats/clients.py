"""How each client turns one module of a kohya file into the weight it runs with, in the project's own
words (docs/adapter-format.md, "Per-client verdicts"). The tests apply these rules to exported files and
compare with the trained modules; `python -m trainer check` states the same rules as verdicts.

- ComfyUI: LoRA up@down·alpha/dim, LoHa and LoKr as LyCORIS defines them; a dora_scale is applied on the
  axis its shape names (merge_comfyui: on rows it divides by the norm of the base W).
- A1111/Forge: the same deltas; a dora_scale is always taken per input column (merge_a1111).
- sd-scripts (networks.lora): lora_down/lora_up/alpha only; dora_scale ignored; LoHa/LoKr keys ignored.
- diffusers: plain LoRA (dora_scale filtered out), LoHa/LoKr refused; per-module ranks and alphas go
  through peft's rank/alpha patterns (a file with one rank and alpha per group needs none). The tests load
  files with the real diffusers instead of this rule.
"""
from __future__ import annotations

import torch

from trainer.adapter.dora import kohya_delta, merge_a1111, merge_comfyui

CLIENT_RULES = ("ComfyUI", "A1111/Forge", "sd-scripts", "diffusers")


def applied_weight(client: str, parts: dict[str, torch.Tensor], alpha: float | None,
                   w: torch.Tensor) -> torch.Tensor | None:
    """The weight `client` computes for a layer of base weight `w` from one module's tensors (suffix →
    tensor, alpha given apart), fp32; None when the client applies nothing of this module."""
    if client not in CLIENT_RULES:
        raise ValueError(f"unknown client {client!r}; expected one of {CLIENT_RULES}")
    w = w.float()
    lycoris = "lora_down.weight" not in parts
    if lycoris and client in ("sd-scripts", "diffusers"):
        return None
    delta = kohya_delta({k: v for k, v in parts.items() if k != "dora_scale"}, alpha, w.shape)
    scale = parts.get("dora_scale")
    if scale is None or client in ("sd-scripts", "diffusers"):
        return w + delta
    merge = merge_comfyui if client == "ComfyUI" else merge_a1111
    return merge(w, delta, scale.float())
