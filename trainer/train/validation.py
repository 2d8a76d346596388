"""Validation: images kept out of training, and a loss on them that two checkpoints are compared by.

Which images: a share of the dataset (validation.split) or a separate folder (validation.path). The share
is the images whose sha256(validation seed, relative path) ranks lowest, so it is the same images every
time (a resumed run holds out what the first process held out), independent of the training seed.
Images whose bytes are among the validation images are removed from training in either case.

The loss is deterministic and cheap: each image is measured at `validation.timesteps` fixed timesteps,
spread over the sampled range [noise.min_timestep, noise.max_timestep), each with its own fixed noise drawn
from a generator seeded by (validation seed, image bytes, timestep index): never from the training's
generators, so validating does not change what the run trains. It reads the cached latents and text
embeddings (the same caches as training), runs under no_grad with the trained modules in eval mode
(dropout off; their modes are put back afterwards) and is the plain MSE against the training target
(ε or v), averaged over images and timesteps: no min-SNR or prior weighting, no noise offset, so the
number means the same whatever those settings are.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from trainer.data.scan import Scan
from trainer.run.atomic import atomic_write_text
from trainer.train.sampling import in_eval_mode


def _rank(seed: int, *parts) -> str:
    return hashlib.sha256(":".join(["atelier-validation", str(seed), *map(str, parts)]).encode()).hexdigest()


def hold_out(scan: Scan, share: float, seed: int) -> tuple[Scan, Scan | None]:
    """(training images, held-out images) of a dataset: round(share × images) of them, at least one, and
    at least one left to train on; (scan, None) when share is 0."""
    if share <= 0:
        return scan, None
    n = len(scan.items)
    k = min(n - 1, max(1, round(share * n)))
    if k < 1:
        raise ValueError(f"validation.split: the dataset {scan.root.name} has {n} image(s); at least 2 are needed "
                         "to hold one out (or use validation.path)")
    chosen = {it.rel for it in sorted(scan.items, key=lambda it: _rank(seed, it.rel))[:k]}
    return (replace(scan, items=[it for it in scan.items if it.rel not in chosen]),
            replace(scan, items=[it for it in scan.items if it.rel in chosen], problems=[]))


def without(scan: Scan, held_out: Scan) -> tuple[Scan, int]:
    """The training scan less any image whose bytes are a validation image's, and how many went."""
    shas = {it.sha256 for it in held_out.items}
    kept = [it for it in scan.items if it.sha256 not in shas]
    return replace(scan, items=kept), len(scan.items) - len(kept)


def validation_scan(scan: Scan) -> Scan:
    """Each validation image once (a folder's repeat count means nothing here)."""
    return replace(scan, items=[replace(it, repeats=1, is_reg=False) for it in scan.items])


def fixed_timesteps(n: int, lo: int, hi: int) -> list[int]:
    """n timesteps spread evenly over [lo, hi): the middle of each of n equal parts."""
    return [min(hi - 1, lo + int((k + 0.5) * (hi - lo) / n)) for k in range(n)]


class Validation:
    """The validation loss of the weights in the model now.

    dataset: a trainer.data.dataset.TrainDataset of the validation images (no flip, shuffle or caption
    dropout; caches attached like the training set's). latents_of(batch) and predict(batch, latents, noise,
    timesteps) -> (prediction, target) are the training step's own, on the unwrapped modules."""

    def __init__(self, dataset, seed: int, timesteps: list[int], batch_size: int, modules: list[torch.nn.Module],
                 latents_of: Callable, predict: Callable):
        self.dataset, self.seed, self.timesteps = dataset, int(seed), list(timesteps)
        self.batch_size, self.modules = max(1, batch_size), modules
        self.latents_of, self.predict = latents_of, predict

    @classmethod
    def of_run(cls, cfg, dataset, base, latents_of: Callable, predict: Callable) -> "Validation":
        """The run's validation (cfg: the TrainConfig) on the base's bare modules."""
        v, n = cfg.validation, cfg.noise
        return cls(dataset, v.seed, fixed_timesteps(v.timesteps, n.min_timestep, n.max_timestep),
                   cfg.dataset.batch_size, [base.unet, *base.text_encoders], latents_of, predict)

    @property
    def num_images(self) -> int:
        return len(self.dataset.items)

    def noise(self, item_index: int, k: int, shape: torch.Size) -> torch.Tensor:
        """The fixed noise of timestep index k on an image: from its bytes, not its place in the set."""
        seed = int(_rank(self.seed, self.dataset.items[item_index].sha256, k)[:15], 16)
        return torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(seed))

    @torch.no_grad()
    def measure(self) -> dict:
        """{"loss": mean over images and timesteps, "per_timestep": [mean over images], "images"}."""
        sums = [0.0] * len(self.timesteps)
        with in_eval_mode(self.modules):
            for i in range(self.num_images):
                sample = self.dataset.sample(i, 0)
                for start in range(0, len(self.timesteps), self.batch_size):
                    ks = range(start, min(len(self.timesteps), start + self.batch_size))
                    batch = self.dataset.collate([sample] * len(ks))
                    latents = self.latents_of(batch)
                    noise = torch.stack([self.noise(i, k, latents.shape[1:]) for k in ks]).to(latents.device)
                    timesteps = torch.tensor([self.timesteps[k] for k in ks], device=latents.device)
                    pred, target = self.predict(batch, latents, noise, timesteps)
                    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
                    for k, v in zip(ks, per.tolist()):
                        sums[k] += v
        per_t = [s / self.num_images for s in sums]
        return {"loss": sum(per_t) / len(per_t), "per_timestep": per_t, "images": self.num_images}

    def record(self, step: int, ema=None) -> dict:
        """The validation event's fields at `step`: the loss, per timestep, and the loss of the EMA's
        weights (trainer.train.ema.EMA) once the average has started."""
        t0 = time.time()
        result = self.measure()
        rec = {"step": step, "loss": round(result["loss"], 6), "images": result["images"],
               "timesteps": self.timesteps, "per_timestep": [round(v, 6) for v in result["per_timestep"]]}
        if ema is not None and ema.active(step):
            with ema.swapped_in():
                rec["ema_loss"] = round(self.measure()["loss"], 6)
        rec["seconds"] = round(time.time() - t0, 3)
        return rec

    def report(self, step: int, ema, events, display, warn, state_dir: Path | None = None,
               checkpoint: dict | None = None) -> None:
        """Measure at `step` and tell it: the validation event, TensorBoard scalars (display) and, after a
        save, validation.json in the state folder. An extra: a failure is a warning, never the run."""
        try:
            record = {**self.record(step, ema), **(checkpoint or {})}
        except Exception as e:
            warn(f"validation at step {step} failed ({type(e).__name__}: {e}); training goes on", step=step)
            return
        if state_dir is not None:
            try:
                atomic_write_text(state_dir / "validation.json", json.dumps(record, indent=1))
            except OSError as e:
                warn(f"could not write {state_dir.name}/validation.json ({e.strerror or e})")
        events.emit("validation", **record)
        if display is not None:
            display.scalar("loss/validation", record["loss"], step)
            if "ema_loss" in record:
                display.scalar("loss/validation_ema", record["ema_loss"], step)
