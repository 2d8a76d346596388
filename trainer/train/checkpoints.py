"""The trainable weights of a run, saving a resumable state with the adapter beside it, and putting a saved
state back (trainer.run.state reads and writes the files): weights, optimizer, schedule, random generators
and the data position."""
from __future__ import annotations

from pathlib import Path

import torch

from trainer.formats.export import RunFacts, export_adapter
from trainer.run.faults import crash_point
from trainer.run.folder import RunFolder
from trainer.run.state import latest_state, load_extra_tensors, load_state, save_state
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


class Resumable:
    """What a run saves and resumes from: the trainable weights, optimizer, LR schedule, noise generator and
    data position (and the weights' EMA, when on), in the run folder's checkpoints; the kohya adapter (and
    its EMA twin) is written after each state."""

    def __init__(self, paths: RunFolder, cfg, base, network, optimizer, lr_scheduler, noise_gen: torch.Generator,
                 progress: Progress, ema=None):
        self.paths, self.cfg, self.base, self.network = paths, cfg, base, network
        self.optimizer, self.lr_scheduler, self.noise_gen, self.progress = optimizer, lr_scheduler, noise_gen, progress
        self.ema = ema  # trainer.train.ema.EMA or None

    def save(self, facts: RunFacts, final: bool) -> tuple[Path, Path, Path | None]:
        """(state folder, adapter file, EMA adapter file or None). A failed save (disk full…) leaves the
        previous ones intact and raises TrainingError with the reason."""
        p = self.progress
        try:
            state_dir = save_state(self.paths.checkpoints, p.step, trainable_state(self.base), self.optimizer,
                                   self.lr_scheduler,
                                   {"epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch,
                                    "generators": {"noise": self.noise_gen.get_state()}},
                                   self.cfg.saving.keep_last,
                                   extra_tensors={"ema": self.ema.state()} if self.ema is not None else None)
            crash_point("adapter", p.step)
            facts.steps, facts.epochs = p.step, p.epoch
            name = self.cfg.saving.output_name
            # a run continued past its first finish keeps that adapter; the new one is named by its step
            taken = (self.paths.output / f"{name}.safetensors").exists()
            path = export_adapter(self.cfg, facts, self.base, self.network, self.paths.output,
                                  name if final and not taken else f"{name}-step{p.step:06d}")
            ema_path = None
            if self.ema is not None:  # the same file format, named after the raw adapter
                with self.ema.swapped_in():
                    ema_path = export_adapter(self.cfg, facts, self.base, self.network, self.paths.output,
                                              f"{path.stem}-ema", ema=self.ema.describe())
        except OSError as e:
            raise TrainingError(f"saving at step {p.step} failed ({e.strerror or e}); the previous adapter and "
                                "state are intact") from None
        return state_dir, path, ema_path

    def resume(self, warn, log) -> None:
        """--resume: from the latest saved state, or (said as a warning) from step 0 when there is none."""
        state_dir = self.restore()
        if state_dir is None:
            warn("--resume: no saved state in this run folder; starting from step 0")
        else:
            log(f"resumed from {state_dir.name}")

    def restore(self) -> Path | None:
        """Put the latest saved state back; the state folder, or None when there is none."""
        state_dir = latest_state(self.paths.checkpoints)
        if state_dir is not None:
            restore(state_dir, trainable_state(self.base), self.optimizer, self.lr_scheduler, self.noise_gen,
                    self.progress)
            if self.ema is not None:
                saved = load_extra_tensors(state_dir, "ema")
                if saved is None:  # EMA switched on at this resume: it starts from the restored weights
                    self.ema.load(trainable_state(self.base))
                else:
                    try:
                        self.ema.load(saved)
                    except ValueError as e:
                        raise TrainingError(f"{state_dir.name}: {e}") from None
        return state_dir
