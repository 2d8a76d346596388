"""Optimizers and learning-rate schedules by name."""
from __future__ import annotations

import torch

from trainer.config import OptimizerSection, ScheduleSection


class OptimizerUnavailable(RuntimeError):
    pass


def build_optimizer(cfg: OptimizerSection, unet_params: list, te_params: list) -> torch.optim.Optimizer:
    groups = []
    if unet_params:
        groups.append({"params": unet_params, "lr": cfg.lr})
    if te_params:
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr})
    wd = cfg.weight_decay
    if cfg.name == "adamw":
        # foreach: one call over all the adapter's small tensors instead of a Python loop over them (torch's
        # default on CPU): the same numbers, 3x faster on a LoRA's ~200 tensors (bench/results/step_overhead.md)
        return torch.optim.AdamW(groups, weight_decay=wd, foreach=True)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise OptimizerUnavailable("optimizer.name = adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=wd)
    if cfg.name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise OptimizerUnavailable("optimizer.name = prodigy needs prodigyopt: pip install prodigyopt") from None
        # Prodigy adapts one step size for all groups: it refuses different non-zero rates, so the text
        # encoder follows the UNet's (as in sd-scripts), or stays frozen when its rate is 0
        for g in groups[1:]:
            g["lr"] = groups[0]["lr"] if g["lr"] else 0.0
        return Prodigy(groups, weight_decay=wd, safeguard_warmup=True, use_bias_correction=True)
    if cfg.name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise OptimizerUnavailable("optimizer.name = lion needs lion-pytorch: pip install lion-pytorch") from None
        return Lion(groups, weight_decay=wd)
    if cfg.name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=wd)
    raise OptimizerUnavailable(f"optimizer.name = {cfg.name!r} is unknown")


def build_lr_scheduler(cfg: ScheduleSection, optimizer):
    from diffusers.optimization import get_scheduler

    kw = {}
    if cfg.scheduler == "cosine_with_restarts":
        kw["num_cycles"] = cfg.num_cycles
    # diffusers' plain "constant" ignores warmup; the user asked for both
    name = "constant_with_warmup" if cfg.scheduler == "constant" and cfg.warmup_steps else cfg.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=cfg.max_train_steps, **kw)
