"""Build the adapter on the base with peft: which modules, which method, which rank.

Targets follow sd-scripts' "LoRA" preset (docs/adapter-format.md): every Linear / 1×1 conv inside the
UNet's transformer blocks, and the text encoders' attention and MLP; LoCon adds the ResNet convs, time
embeddings, shortcuts and down/upsamplers (own rank and alpha). The regexes match diffusers/transformers
module paths.

Methods: LoRA (optionally DoRA, per input column or per output row, both via trainer.adapter.dora),
LoHa and LoKr (peft's LyCORIS ports), AdaLoRA (peft's SVD-form LoRA whose rank budget is pruned during
training, through `Network.after_step`). QLoRA holds the frozen base's Linear layers in 4-bit NF4
(trainer.adapter.quantize) before injection; LoftQ then starts A and B from the quantisation error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from trainer.adapter import ADAPTER  # noqa: F401 (re-exported: kohya_export and others import it from here)
from trainer.config import NetworkSection
from trainer.adapter.rules import network_problems


UNET_ATTENTION = (r".*attentions\.\d+\.(?:proj_in|proj_out|transformer_blocks\.\d+\."
                  r"(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.(?:0\.proj|2)))")
UNET_CONV = (r".*(?:resnets\.\d+\.(?:conv1|conv2|time_emb_proj|conv_shortcut)"
             r"|downsamplers\.0\.conv|upsamplers\.0\.conv)")
TEXT_ENCODER = r".*encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|mlp\.(?:fc1|fc2))"


def text_encoder_layers_used(family: str, index: int, n_layers: int, clip_skip: int) -> int:
    """How many of a text encoder's first layers feed the UNet (trainer.train.conditioning): SD1/SD2 take
    layer L − clip_skip's output; SDXL takes text encoder 1's layer L − clip_skip − 1 and text encoder 2's
    pooled last layer. Later layers never get a gradient, so they get no adapter (an all-zero module in
    the file, and a None gradient that AdaLoRA's allocator cannot take)."""
    if family == "sdxl":
        return n_layers if index == 1 else max(1, n_layers - clip_skip)
    return max(1, n_layers - clip_skip + 1)


def text_encoder_pattern(layers: int) -> str:
    """TEXT_ENCODER limited to layers 0 … layers-1."""
    return TEXT_ENCODER.replace(r"layers\.\d+\.", r"layers\.(?:" + "|".join(str(i) for i in range(layers)) + r")\.")


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
    dora_axis: str | None = None  # "out" / "in" when DoRA is on
    quant: object | None = None  # trainer.adapter.quantize.QuantReport of a 4-bit base (QLoRA)
    loftq_error: dict | None = None  # {"before": …, "after": …} relative weight error of the quantised Linears
    adalora_tuners: list = field(default_factory=list, repr=False)  # peft AdaLoraModel per adapted component

    def all_params(self) -> list[torch.nn.Parameter]:
        return self.params_unet + self.params_te

    def after_step(self, step: int) -> None:
        """Called after each optimizer step, before gradients are cleared: AdaLoRA scores each singular
        triplet from its gradient and masks the least important ones down to the budget. A weight that got
        no gradient this step (peft's allocator multiplies by p.grad) counts as a zero gradient: it did
        not matter to the loss."""
        for tuner in self.adalora_tuners:
            for p in tuner.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
            tuner.update_and_allocate(step)


def _target_regex(patterns: list[str]) -> str:
    return "(?:" + "|".join(patterns) + ")"


def adalora_schedule(total_steps: int) -> dict:
    """AdaLoRA's phases over a run: a warm-up at the full rank (tinit), the budget falling cubically,
    and a final stretch at the target budget with the masks fixed (tfinal)."""
    if total_steps < 3:
        raise NetworkError(f"AdaLoRA needs at least 3 training steps to allocate ranks (got {total_steps})")
    tinit = total_steps // 10
    tfinal = max(1, total_steps // 5)
    return dict(total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=max(1, total_steps // 50))


def peft_config(cfg: NetworkSection, patterns: list[str], conv: bool, total_steps: int | None = None):
    target = _target_regex(patterns)
    common = dict(target_modules=target)
    # conv layers get their own rank/alpha; peft matches pattern keys against the module-name suffix
    rank_pattern = {UNET_CONV[2:]: cfg.conv_rank} if conv else {}
    alpha_pattern = {UNET_CONV[2:]: cfg.conv_alpha} if conv else {}
    if cfg.algo == "lora":
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          use_dora=False,  # DoRA is attached by trainer.adapter.dora on either axis
                          init_lora_weights=True, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                          **common)
    if cfg.algo == "loha":
        return LoHaConfig(r=cfg.rank, alpha=cfg.alpha, rank_dropout=0.0, module_dropout=0.0,
                          init_weights=True, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **common)
    if cfg.algo == "lokr":
        return LoKrConfig(r=cfg.rank, alpha=cfg.alpha, rank_dropout=0.0, module_dropout=0.0,
                          init_weights=True, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **common)
    if cfg.algo == "adalora":
        if total_steps is None:
            raise NetworkError("AdaLoRA needs the run's total steps (build_network(..., total_steps=N))")
        # AdaLoRA's rank_pattern holds its pruning masks, so conv layers share the starting rank here
        return AdaLoraConfig(init_r=cfg.rank, target_r=cfg.adalora_target_rank, lora_alpha=cfg.alpha,
                             lora_dropout=cfg.dropout, **adalora_schedule(total_steps), **common)
    raise NetworkError(f"network.algo = {cfg.algo!r} is not supported by this build")


def trainable_parameters(model: torch.nn.Module, adapter: str = ADAPTER) -> list[torch.nn.Parameter]:
    """The adapter's own weights in every tuner layer (peft's adapter_layer_names: lora_A/B, DoRA
    magnitudes, hada_*, lokr_*, AdaLoRA's lora_E), not the frozen base nor AdaLoRA's ranknum."""
    params, seen = [], set()
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for attr in module.adapter_layer_names:
            holder = getattr(module, attr, None)
            if holder is None or adapter not in holder:
                continue
            item = holder[adapter]
            for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters()):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def _inject(model: torch.nn.Module, config, net: Network) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    if isinstance(config, AdaLoraConfig):
        from peft.tuners.adalora import AdaLoraModel

        # the tuner object keeps the rank allocator that after_step drives
        net.adalora_tuners.append(AdaLoraModel(model, config, ADAPTER))
    else:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    if net.dora_axis is not None:
        from trainer.adapter.dora import attach_dora

        attach_dora(model, ADAPTER, net.dora_axis)
    params = trainable_parameters(model)
    if not params:
        raise NetworkError(f"no target modules matched in {type(model).__name__}")
    for p in params:
        p.requires_grad_(True)
    return params


def _quantize(base, cfg: NetworkSection, keep_originals: bool):
    from trainer.adapter.quantize import QuantReport, quantize_nf4

    total = QuantReport()
    for model in [base.unet, *base.text_encoders]:
        p = next(model.parameters())
        dtype = p.dtype if p.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
        rep = quantize_nf4(model, p.device, compute_dtype=dtype, keep_originals=keep_originals)
        total.add(rep)
        total.originals.update({f"{id(model)}:{k}": v for k, v in rep.originals.items()})
    return total


def build_network(base, cfg: NetworkSection, total_steps: int | None = None, clip_skip: int = 1) -> Network:
    """Inject adapters into base.unet (and the text encoders if asked). B (or its LoHa/LoKr/AdaLoRA
    analogue) starts at zero, so the adapted model equals the base at step 0 — except under LoftQ, whose
    start is the 4-bit base plus its low-rank correction (closer to the full-precision base).
    total_steps: the run's optimizer steps (AdaLoRA's budget schedule needs it); clip_skip: which text-encoder
    layer conditions the UNet (the layers after it get no adapter)."""
    problems = network_problems(cfg)
    if problems:
        raise NetworkError("; ".join(problems))
    net = Network(unet=cfg.train_unet, text_encoders=[], algo=cfg.algo,
                  dora_axis=cfg.dora_axis if cfg.use_dora else None)
    if cfg.quantize_base == "nf4":
        net.quant = _quantize(base, cfg, keep_originals=cfg.loftq)
    if cfg.train_unet:
        patterns = [UNET_ATTENTION] + ([UNET_CONV] if cfg.conv else [])
        net.params_unet = _inject(base.unet, peft_config(cfg, patterns, cfg.conv, total_steps), net)
    if cfg.train_text_encoder:
        for i, te in enumerate(base.text_encoders):
            used = text_encoder_layers_used(base.family, i, te.config.num_hidden_layers, clip_skip)
            pattern = text_encoder_pattern(used)
            net.params_te += _inject(te, peft_config(cfg, [pattern], False, total_steps), net)
            net.text_encoders.append(i)
    if cfg.loftq:
        from trainer.adapter.quantize import loftq_initialise

        models = ([base.unet] if cfg.train_unet else []) + [base.text_encoders[i] for i in net.text_encoders]
        net.loftq_error = loftq_initialise(models, net.quant.originals, ADAPTER)
    if net.quant is not None:
        net.quant.originals.clear()  # the full-precision copies were only needed for LoftQ
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


def effective_weight(layer, adapter: str = ADAPTER) -> torch.Tensor:
    """The weight the adapted layer computes with (fp32, the base's shape): W + ΔW for LoRA, LoHa, LoKr
    and AdaLoRA, the DoRA-normalised form for DoRA, with W dequantised for a 4-bit base."""
    from trainer.adapter.dora import ColumnDora, base_weight, dora_axis, row_norm

    w = base_weight(layer)
    with torch.no_grad():
        axis = dora_axis(layer, adapter)
        variant = getattr(layer, "lora_variant", {}).get(adapter)
        if isinstance(variant, ColumnDora):  # either axis of trainer.adapter.dora
            return type(variant).merged(layer, adapter, w)
        if hasattr(layer, "lora_A") and adapter in getattr(layer, "lora_A", {}) and not hasattr(layer, "lora_E"):
            from trainer.adapter.dora import lora_delta

            delta = lora_delta(layer, adapter).float()
        else:
            delta = layer.get_delta_weight(adapter).float().reshape(w.shape)
        merged = w + delta
        if axis == "out":
            m = layer.lora_magnitude_vector[adapter].weight.detach().float()
            return merged * (m.reshape(row_norm(merged).shape) / row_norm(merged))
        return merged
