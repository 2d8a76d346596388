"""The trainable weights of a run, and putting a saved state back (trainer.run.state reads and writes
the files): weights, optimizer, schedule, random generators and the data position."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.run.state import load_state
from trainer.train.setup import TrainingError
from trainer.train.timing import Progress


def trainable_state(base) -> dict[str, torch.Tensor]:
    """{"unet.<param>" | "te<i>.<param>": parameter} of every parameter that trains."""
    out = {}
    for prefix, model in [("unet", base.unet)] + [(f"te{i}", te) for i, te in enumerate(base.text_encoders)]:
        for name, prm in model.named_parameters():
            if prm.requires_grad:
                out[f"{prefix}.{name}"] = prm
    return out


def restore(state_dir: Path, params: dict[str, torch.Tensor], optimizer, lr_scheduler,
            noise_gen: torch.Generator, progress: Progress) -> None:
    adapter, opt_sd, rng, info = load_state(state_dir)
    missing = set(params) - set(adapter)
    if missing:
        raise TrainingError(f"{state_dir.name}: the saved state does not match this network "
                            f"({len(missing)} tensors missing, e.g. {sorted(missing)[0]})")
    with torch.no_grad():
        for k, prm in params.items():
            prm.copy_(adapter[k].to(prm.device, prm.dtype))
    optimizer.load_state_dict(opt_sd)
    lr_scheduler.load_state_dict(info["lr_scheduler"])
    torch.set_rng_state(rng["torch_cpu"])
    noise_gen.set_state(rng["gen_noise"])
    progress.step, progress.epoch, progress.batch_in_epoch = info["step"], info["epoch"], info["batch_in_epoch"]
