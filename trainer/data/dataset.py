"""The training dataset: which samples an epoch holds, in which batches, and what each sample looks like.

Everything random here (batch order, flips, caption shuffle and dropout) is drawn from RNGs seeded by
(seed, epoch[, sample index]), never from global state, so a run resumed at epoch E, batch B sees exactly
the batches and pixels the first run would have seen.

Sample indices: an epoch has `num_samples(epoch)` slots. Slots 0..T-1 are the training images expanded
by their repeats (T = sum of repeats). With regularisation images, slots T..2T-1 are as many
regularisation samples (kohya's rule: as many as training samples per epoch), taken cyclically from the
regularisation images (expanded by their own repeats), starting further along each epoch so that a large
regularisation set is used in full over the run.
"""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import torch
from PIL import ImageOps

from trainer.config import DatasetSection
from trainer.data.buckets import Buckets, Placement, box_part
from trainer.data.cache import MASK_RECIPE, LatentCache, MaskCache, TextCache, stable_key
from trainer.data.captions import process_caption
from trainer.data.crops import crop_counts
from trainer.data.encoding import DatasetEncodings, LatentEncodeFn, ProgressFn, TextEncodeFn
from trainer.data.images import load_image, parse_background, read_checked
from trainer.data.loss_masks import LossMasks
from trainer.data.masks import mask_counts
from trainer.data.scan import Item, Problem, Scan


def _rng(*parts) -> random.Random:
    # str seeds go through SHA-512 in CPython: identical in every process, unlike hash()
    return random.Random("atelier:" + ":".join(str(p) for p in parts))


def to_tensor(image) -> torch.Tensor:
    """PIL RGB -> float [3, H, W] in [-1, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class TrainDataset:
    def __init__(self, scan: Scan, cfg: DatasetSection, seed: int, reg_scan: Scan | None = None,
                 masked_loss: bool = False):
        self.cfg = cfg
        self.masked_loss = bool(masked_loss)
        self.seed = int(seed)
        self.scan = scan
        self.reg_scan = reg_scan
        parse_background(cfg.background)  # fail now, not at the first sample
        self.buckets = Buckets.of(cfg)
        train = [replace(it, is_reg=False) for it in scan.items]
        reg = [replace(it, is_reg=True) for it in reg_scan.items] if reg_scan is not None else []
        self.items: list[Item] = train + reg
        self.placements: list[Placement] = [self.buckets.place(it.width, it.height, it.crop_box, it.focus)
                                            for it in self.items]
        self._train_slots = [i for i, it in enumerate(train) for _ in range(it.repeats)]
        self._reg_cycle = [len(train) + j for j, it in enumerate(reg) for _ in range(it.repeats)]
        self._n_train = len(self._train_slots)
        self._n_reg = self._n_train if self._reg_cycle else 0
        # masked loss: samples of masked images carry "mask", their mask at latent resolution
        self.masks = LossMasks(self.items, self.placements, self.buckets, cfg.background, self.masked_loss)
        self.encodings = DatasetEncodings(self, max(1, cfg.batch_size))
        if self.masked_loss:  # in memory until the trainer attaches one beside the latents
            self.encodings.mask_cache = MaskCache(None, MASK_RECIPE)

    # ---- what the epoch holds -------------------------------------------------------------------
    def num_samples(self, epoch: int = 0) -> int:
        return self._n_train + self._n_reg

    def __len__(self) -> int:
        return self._n_train + self._n_reg

    def item_index(self, index: int, epoch: int) -> int:
        """Which image (an index into `items`) sample slot `index` shows in `epoch`."""
        if index < 0 or index >= len(self):
            raise IndexError(f"sample index {index} out of range 0..{len(self) - 1}")
        if index < self._n_train:
            return self._train_slots[index]
        j = index - self._n_train
        return self._reg_cycle[(j + epoch * self._n_reg) % len(self._reg_cycle)]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Batches of sample indices for `epoch`; each batch holds one bucket only. The same (seed, epoch)
        always gives the same list."""
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for idx in range(len(self)):
            by_bucket.setdefault(self.placements[self.item_index(idx, epoch)].bucket, []).append(idx)
        rng = _rng("batches", self.seed, epoch)
        bs = self.cfg.batch_size
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            idxs = by_bucket[bucket]
            rng.shuffle(idxs)
            batches.extend(idxs[i:i + bs] for i in range(0, len(idxs), bs))
        rng.shuffle(batches)
        return batches

    # ---- one sample -----------------------------------------------------------------------------
    def flip_for(self, index: int, epoch: int) -> bool:
        return bool(self.cfg.flip) and _rng("flip", self.seed, epoch, index).random() < 0.5

    def caption_for(self, index: int, epoch: int) -> str:
        it = self.items[self.item_index(index, epoch)]
        return process_caption(it.caption, self.cfg.shuffle_caption, self.cfg.keep_tokens, self.cfg.caption_dropout,
                               _rng("caption", self.seed, epoch, index))

    def latent_key(self, item_idx: int, flip: bool) -> str:
        """What a latent depends on: the image's bytes, how it is placed in its bucket, the flip and the
        alpha background; the encoder id is added by the cache."""
        it, p = self.items[item_idx], self.placements[item_idx]
        return stable_key(image=it.sha256, bucket=list(p.bucket), resized=list(p.resized),
                          crop=[p.crop_left, p.crop_top], flip=bool(flip),
                          background=self.cfg.background.lower(), **box_part(p))

    def pixels(self, item_idx: int, flip: bool = False) -> torch.Tensor:
        """[3, H, W] in [-1, 1] at the item's bucket size. The bytes decoded are checked against the scan's
        hash, so a cached latent can never belong to other pixels than its key says."""
        it = self.items[item_idx]
        img = load_image(it.path, self.cfg.background, data=read_checked(it.path, it.sha256)).image
        img, _ = self.buckets.apply(img, it.crop_box, it.focus)
        if flip:
            img = ImageOps.mirror(img)
        return to_tensor(img)

    def sample(self, index: int, epoch: int) -> dict:
        item_idx = self.item_index(index, epoch)
        it, p = self.items[item_idx], self.placements[item_idx]
        flip = self.flip_for(index, epoch)
        caption = self.caption_for(index, epoch)
        bw, bh = p.bucket
        out = {
            "index": index, "item": item_idx, "rel": it.rel, "caption": caption, "is_reg": it.is_reg,
            "key": self.latent_key(item_idx, flip), "flip": flip, "bucket": p.bucket,
            # SDXL's size conditioning, as (height, width) and (top, left)
            "original_size": (p.original[1], p.original[0]), "crop_top_left": (p.crop_top, p.crop_left),
            "target_size": (bh, bw),
            "loss_weight": float(self.cfg.prior_loss_weight) if it.is_reg else 1.0,
        }
        if self.encodings.latent_cache is not None:
            out["latents"] = self.encodings.latents_for(item_idx, flip, out["key"])
        else:
            out["pixels"] = self.pixels(item_idx, flip)
        if self.encodings.text_cache is not None:
            out["text"] = self.encodings.text_for(caption)
        if self.masks.has(item_idx):
            out["mask"] = self.encodings.mask_for(item_idx, flip, self.masks.key(item_idx, flip))
        return out

    def collate(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("collate: empty batch")
        buckets = {s["bucket"] for s in samples}
        if len(buckets) > 1:
            raise ValueError(f"collate: a batch mixes buckets {sorted(buckets)}")
        out: dict = {
            "captions": [s["caption"] for s in samples],
            "is_reg": torch.tensor([s["is_reg"] for s in samples], dtype=torch.bool),
            "loss_weights": torch.tensor([s["loss_weight"] for s in samples], dtype=torch.float32),
            "keys": [s["key"] for s in samples],
            "indices": [s["index"] for s in samples],
            "original_sizes": torch.tensor([s["original_size"] for s in samples], dtype=torch.long),
            "crop_top_lefts": torch.tensor([s["crop_top_left"] for s in samples], dtype=torch.long),
            "target_sizes": torch.tensor([s["target_size"] for s in samples], dtype=torch.long),
        }
        if all("latents" in s for s in samples):
            out["latents"] = torch.stack([s["latents"] for s in samples])
        else:
            out["pixels"] = torch.stack([s["pixels"] for s in samples])
        if all("text" in s for s in samples):
            out["text"] = {k: torch.stack([s["text"][k] for s in samples]) for k in samples[0]["text"]}
        masked = [s["mask"] for s in samples if "mask" in s]
        if masked:  # unmasked images in the batch train on every pixel: an all-white mask
            out["masks"] = torch.stack([s["mask"] if "mask" in s else torch.ones_like(masked[0]) for s in samples])
        return out

    # ---- caches ---------------------------------------------------------------------------------
    def attach_latent_cache(self, cache: LatentCache, encode_fn: LatentEncodeFn,
                            encode_batch_size: int | None = None) -> None:
        """From now on sample() returns "latents" instead of "pixels". encode_fn(pixels [B, 3, H, W] in
        [-1, 1], on CPU) -> latents [B, C, h, w], as the trainer wants them (VAE, scaling, device and
        no_grad are its business). Call precompute() to encode everything once up front."""
        self.encodings.latent_cache = cache
        self.encodings.latent_encode = encode_fn
        if encode_batch_size:
            self.encodings.batch_size = encode_batch_size

    @property
    def encoder_calls(self) -> dict[str, int]:
        """How often the trainer's encode_fns ran: {"latents": n, "text": n}."""
        return self.encodings.calls

    @property
    def text_cacheable(self) -> bool:
        """Captions take finitely many values (the caption, or "" when dropped) unless tags are shuffled."""
        return not self.cfg.shuffle_caption

    def attach_text_cache(self, cache: TextCache, encode_fn: TextEncodeFn) -> None:
        """From now on sample() carries "text": encode_fn([captions]) -> {name: tensor [B, ...]} per caption.
        Only for a frozen text encoder; refused with shuffled captions (too many variants to cache)."""
        if not self.text_cacheable:
            raise ValueError("text-encoder cache needs fixed captions: dataset.shuffle_caption is on")
        self.encodings.text_cache = cache
        self.encodings.text_encode = encode_fn

    def attach_mask_cache(self, cache: MaskCache) -> None:
        """Keep the latent-resolution masks in `cache` (the trainer's: beside the latents, on disk)."""
        self.encodings.mask_cache = cache

    @property
    def flips(self) -> tuple[bool, ...]:
        """The flips an epoch can ask for."""
        return (False, True) if self.cfg.flip else (False,)

    def latent_keys(self) -> list[tuple[int, bool, str]]:
        """(item index, flip, key) of every latent an epoch can ask for."""
        return [(i, f, self.latent_key(i, f)) for i in range(len(self.items)) for f in self.flips]

    def precompute(self, progress_cb: ProgressFn | None = None) -> dict[str, int]:
        """Encode every latent (both flips when flip is on) and caption variant not yet cached, in batches
        of one bucket. Afterwards sample() never calls an encoder. Returns {"latents_computed",
        "latents_reused", "text_computed", "text_reused"}; progress_cb(done, total) after each batch."""
        return self.encodings.precompute(progress_cb)

    def expect_first_use(self) -> dict[str, int]:
        """Encode the captions now and no latent: sample() encodes what it misses, and encode_first_use
        encodes a batch's misses in one call. `pending_encodings` counts down as they are made. Returns
        {"latents_reused", "latents_pending", "text_computed", "text_reused"}."""
        return self.encodings.expect_first_use()

    def encode_first_use(self, indices: list[int], epoch: int) -> None:
        """Encode the latents of these samples (one batch: one bucket) that no cache holds yet, in one encoder
        call, before sample() reads them."""
        if not self.encodings.pending:
            return
        entries = []
        for index in indices:
            item_idx, flip = self.item_index(index, epoch), self.flip_for(index, epoch)
            entries.append((item_idx, flip, self.latent_key(item_idx, flip)))
        self.encodings.encode_pending(entries)

    @property
    def pending_encodings(self) -> int:
        """Latents still to encode on first use (0 once all are cached, or when precomputed)."""
        return len(self.encodings.pending)

    # ---- what metadata and the GUI need ---------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self.scan.items)

    @property
    def mask_counts(self) -> dict[str, int]:
        """{"file": n, "alpha": n, "none": n} over the training images (not the regularisation ones)."""
        return mask_counts(self.scan.items)

    @property
    def num_masked_images(self) -> int:
        """Training images that train with a mask (0 without masked loss)."""
        counts = self.mask_counts
        return counts["file"] + counts["alpha"] if self.masked_loss else 0

    @property
    def crop_counts(self) -> dict[str, int]:
        """{"box": n, "focus": n} over the training images: how many have a crop box / focus point."""
        return crop_counts(self.scan.items)

    @property
    def num_reg_images(self) -> int:
        return len(self.reg_scan.items) if self.reg_scan is not None else 0

    @property
    def folders(self) -> dict[str, dict[str, int]]:
        return self.scan.folders

    @property
    def reg_folders(self) -> dict[str, dict[str, int]]:
        return self.reg_scan.folders if self.reg_scan is not None else {}

    @property
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        return self.scan.tag_frequency

    @property
    def bucket_info(self) -> dict:
        n_train = len(self.scan.items)
        triples = [(p.original, p.bucket, it.repeats)
                   for it, p in zip(self.items[:n_train], self.placements[:n_train])]
        return self.buckets.info(triples)

    @property
    def problems(self) -> list[Problem]:
        reg = [replace(p, file=f"reg:{p.file}") for p in self.reg_scan.problems] if self.reg_scan else []
        return list(self.scan.problems) + reg
