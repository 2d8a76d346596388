"""Build the adapter on the base with peft: which modules, which method, which rank.

Targets follow sd-scripts' "LoRA" preset (../shared/LORA_FORMAT.md): every Linear / 1×1 conv inside the
UNet's transformer blocks, and the text encoders' attention and MLP; LoCon adds the ResNet convs, time
embeddings, shortcuts and down/upsamplers. The regexes match diffusers/transformers module paths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from trainer.config import NetworkSection

ADAPTER = "default"

UNET_ATTENTION = (r".*attentions\.\d+\.(?:proj_in|proj_out|transformer_blocks\.\d+\."
                  r"(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.(?:0\.proj|2)))")
UNET_CONV = (r".*(?:resnets\.\d+\.(?:conv1|conv2|time_emb_proj|conv_shortcut)"
             r"|downsamplers\.0\.conv|upsamplers\.0\.conv)")
TEXT_ENCODER = r".*encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.(?:fc1|fc2))"


class NetworkError(ValueError):
    pass


@dataclass
class Network:
    """The adapted modules of one base: what was injected where, and the trainable parameters."""
    unet: bool
    text_encoders: list[int]
    algo: str
    params_unet: list[torch.nn.Parameter] = field(default_factory=list)
    params_te: list[torch.nn.Parameter] = field(default_factory=list)

    def all_params(self) -> list[torch.nn.Parameter]:
        return self.params_unet + self.params_te

    def after_step(self, step: int) -> None:
        """Called after each optimizer step, before gradients are cleared (methods that adapt their
        own structure during training hook in here)."""


def _target_regex(patterns: list[str]) -> str:
    return "(?:" + "|".join(patterns) + ")"


def peft_config(cfg: NetworkSection, patterns: list[str], conv: bool):
    target = _target_regex(patterns)
    common = dict(target_modules=target)
    # conv layers get their own rank/alpha; peft matches pattern keys against the module-name suffix
    rank_pattern = {UNET_CONV[2:]: cfg.conv_rank} if conv else {}
    alpha_pattern = {UNET_CONV[2:]: cfg.conv_alpha} if conv else {}
    if cfg.algo == "lora":
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=cfg.use_dora,
                          init_lora_weights=True, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                          **common)
    if cfg.algo == "loha":
        return LoHaConfig(r=cfg.rank, alpha=cfg.alpha, rank_dropout=0.0, module_dropout=0.0,
                          init_weights=True, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **common)
    if cfg.algo == "lokr":
        return LoKrConfig(r=cfg.rank, alpha=cfg.alpha, rank_dropout=0.0, module_dropout=0.0,
                          init_weights=True, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **common)
    raise NetworkError(f"network.algo = {cfg.algo!r} is not supported by this build")


def _inject(model: torch.nn.Module, config) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    params = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for name, p in module.named_parameters():
                if "base_layer" not in name:
                    p.requires_grad_(True)
                    params.append(p)
    if not params:
        raise NetworkError(f"no target modules matched in {type(model).__name__}")
    return params


def build_network(base, cfg: NetworkSection) -> Network:
    """Inject adapters into base.unet (and the text encoders if asked). B (or its LoHa/LoKr analogue)
    starts at zero, so the adapted model equals the base at step 0."""
    net = Network(unet=cfg.train_unet, text_encoders=[], algo=cfg.algo)
    if cfg.train_unet:
        patterns = [UNET_ATTENTION] + ([UNET_CONV] if cfg.conv else [])
        net.params_unet = _inject(base.unet, peft_config(cfg, patterns, cfg.conv))
    if cfg.train_text_encoder:
        for i, te in enumerate(base.text_encoders):
            net.params_te += _inject(te, peft_config(cfg, [TEXT_ENCODER], conv=False))
            net.text_encoders.append(i)
    return net


def adapted_modules(model: torch.nn.Module) -> dict[str, BaseTunerLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def set_adapter_scale(model: torch.nn.Module, scale: float) -> None:
    """Multiply every adapter's contribution (LoRA strength in the clients' sense)."""
    for m in adapted_modules(model).values():
        if hasattr(m, "scaling") and isinstance(m.scaling, dict) and ADAPTER in m.scaling:
            base_scale = m.__dict__.setdefault("_atelier_scale0", dict(m.scaling))[ADAPTER]
            m.scaling[ADAPTER] = base_scale * scale
        else:
            raise NetworkError(f"strength scaling unsupported for {type(m).__name__}")


def disable_adapters(model: torch.nn.Module, disabled: bool = True) -> None:
    for m in adapted_modules(model).values():
        m.enable_adapters(not disabled)


def matches(regex: str, name: str) -> bool:
    return re.fullmatch(regex, name) is not None
