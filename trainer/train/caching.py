"""The run's caches and the frozen parts that fill them.

Every image is encoded once (and each caption, where the text encoder is frozen and captions are not
shuffled), up front or when a step first uses it, so that a step runs the UNet alone. Once nothing is
left to encode, the idle VAE and text encoders leave the device, or memory (trainer.train.frozen), and
each preview round brings them back for its duration."""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Callable

import torch

from trainer.config import TrainConfig
from trainer.train.conditioning import encode_text
from trainer.train.frozen import FrozenParts, idle_parts
from trainer.train.memory import PhasePeaks
from trainer.train.timing import Timing

Warn = Callable[..., None]
Log = Callable[[str], None]

class Encoders:
    """The frozen encoders as the step (or the cache) calls them: pixels → latents, captions → states."""

    def __init__(self, base, device: str, clip_skip: int):
        self.base, self.device, self.clip_skip = base, device, clip_skip

    @torch.no_grad()
    def captions(self, captions: list[str]) -> dict[str, torch.Tensor]:
        out = encode_text(self.base, captions, self.clip_skip, self.device)
        return {k: v.float().cpu() for k, v in out.items()}

    @torch.no_grad()
    def pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.base.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        # the mean, not a sample: deterministic, so a cached latent is the latent
        return (dist.mean * vae.config.scaling_factor).float().cpu()


def prepare_caches(cfg: TrainConfig, ds, base, encoders: Encoders, warn: Warn, log: Callable[[str], None],
                   progress: Callable[[int, int], None] | None = None, first_use: bool = False) -> dict:
    """Encode every image once (and captions, where the text encoder is frozen and captions are not
    shuffled) so that the training step runs the UNet alone: now, or with `first_use` when a step first
    uses each (the dataset's encode_first_use), so that step 1 does not wait for the whole dataset. On
    disk the caches live beside the dataset and are reused by later runs; entries are keyed by content,
    so an edit invalidates only its own entry. Returns the cache statistics."""
    from trainer.data.cache import MASK_RECIPE, LatentCache, MaskCache, TextCache, default_cache_dir, fingerprint_module

    # masks are averaged down to the latents' size: the VAE halves the image once per block after the first
    ds.masks.latent_factor = 2 ** (len(base.vae.config.block_out_channels) - 1)
    cache_dir = default_cache_dir(ds.scan.root) if cfg.dataset.cache_to_disk else None
    if cache_dir is not None and not os.access(ds.scan.root, os.W_OK):
        warn(f"dataset folder {ds.scan.root.name} is read-only: caches kept in memory only")
        cache_dir = None
    t0 = time.time()
    text_cached = cfg.dataset.cache_text and not cfg.network.train_text_encoder and ds.text_cacheable
    if cfg.dataset.cache_latents:
        vae = base.vae
        vae_id = f"{base.family}-vae-mean:{fingerprint_module(vae, str(vae.config.scaling_factor))}"
        ds.attach_latent_cache(LatentCache(cache_dir, vae_id), encoders.pixels)
    if text_cached:
        te_id = "|".join(fingerprint_module(te) for te in base.text_encoders)
        ds.attach_text_cache(TextCache(cache_dir, f"{base.family}-te-skip{cfg.model.clip_skip}:{te_id}"),
                             encoders.captions)
    if ds.masked_loss:
        ds.attach_mask_cache(MaskCache(cache_dir, MASK_RECIPE))
    if not (cfg.dataset.cache_latents or text_cached):
        return {}
    if first_use:
        stats = ds.expect_first_use()
        log(f"caches: {stats}; the pending ones are encoded when a step first uses them")
        return stats
    stats = ds.precompute(progress)
    log(f"caches: {stats} in {time.time() - t0:.1f}s")
    return stats


class Caching:
    """The caches' life in a run: prepared at set-up, the first epoch's leftovers encoded when it ends,
    then the idle frozen parts released; `around_previews` is what a preview round runs inside."""

    def __init__(self, cfg: TrainConfig, dataset, val_dataset, base, encoders: Encoders, memory: PhasePeaks,
                 timing: Timing, events, warn: Warn, log: Log):
        self.cfg, self.dataset, self.val_dataset, self.base, self.encoders = cfg, dataset, val_dataset, base, encoders
        self.memory, self.timing, self.events, self.warn, self.log = memory, timing, events, warn, log
        self.frozen: FrozenParts | None = None

    def progress(self, done: int, total: int) -> None:
        self.events.emit("phase", phase="caching", done=done, total=total)

    def prepare(self) -> dict:
        """The training set's caches (on first use, if so set) and the validation set's; the statistics."""
        stats = prepare_caches(self.cfg, self.dataset, self.base, self.encoders, self.warn, self.log, self.progress,
                               first_use=self.cfg.dataset.cache_on_first_use)
        if self.val_dataset is not None:
            prepare_caches(self.cfg, self.val_dataset, self.base, self.encoders, self.warn, self.log)
        return stats

    def track_frozen_parts(self, network, device: str, keep: bool) -> FrozenParts:
        """The VAE and the text encoders a step does not run; `keep`: previews will need them."""
        self.frozen = FrozenParts(idle_parts(self.base, network, self.dataset), device, keep=keep, log=self.log)
        if self.dataset.pending_encodings and "vae" in self.frozen.parts:
            # latents on first use, captions already cached: the VAE's encoder alone has work left
            early = {name: m for name, m in self.frozen.parts.items() if name != "vae"}
            early.update({f"vae.{name}": getattr(self.base.vae, name) for name in ("decoder", "post_quant_conv")
                          if getattr(self.base.vae, name, None) is not None})
            self.frozen.free_early(early)
        return self.frozen

    def release_when_done(self, epoch: int) -> None:
        """Once no latent or caption is left to encode, the idle frozen parts leave the device (or memory).
        Encoding on first use, an epoch may never ask for some (the other flip, regularisation images
        beyond the first epoch's share): once the first epoch is over they are encoded at once."""
        if self.frozen is None or self.frozen.state != "resident":
            return
        if self.dataset.pending_encodings and epoch >= 1:
            with self.memory.during("caching"), self.timing.measure("cache"):
                stats = self.dataset.precompute(self.progress)
            self.log(f"caches: the first epoch's leftovers {stats}")
        if not self.dataset.pending_encodings:
            self.frozen.release()

    def around_previews(self) -> ExitStack:
        """What a preview round runs inside: the frozen parts on the device, its own memory phase."""
        stack = ExitStack()
        stack.enter_context(self.memory.during("previews"))
        if self.frozen is not None:
            stack.enter_context(self.frozen.on_device())
        return stack
