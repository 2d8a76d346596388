"""Each training image's loss mask as the training step wants it (masked loss): at latent resolution,
through the very resize, crop and flip of its image, with a cache key that changes when the mask does.
Where a mask comes from is trainer.data.masks' business (torch-free, shared with the studio)."""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageOps

from trainer.data.buckets import LATENT_FACTOR, Buckets, Placement, box_part
from trainer.data.cache import stable_key
from trainer.data.images import ImageError, read_checked
from trainer.data.masks import load_mask, mask_kind
from trainer.data.scan import Item


class LossMasks:
    def __init__(self, items: list[Item], placements: list[Placement], buckets: Buckets, background: str,
                 enabled: bool):
        self.items, self.placements, self.buckets, self.background = items, placements, buckets, background
        self.enabled = enabled
        self.latent_factor = LATENT_FACTOR  # image pixels per latent pixel; the trainer sets its VAE's

    def has(self, item_idx: int) -> bool:
        return self.enabled and mask_kind(self.items[item_idx]) is not None

    def latent_size(self, item_idx: int) -> tuple[int, int]:
        """(height, width) of the item's latents."""
        bw, bh = self.placements[item_idx].bucket
        return bh // self.latent_factor, bw // self.latent_factor

    def key(self, item_idx: int, flip: bool) -> str:
        """What a latent-resolution mask depends on: the mask file's bytes (or, for an alpha mask, the image's),
        the placement, the flip and the latent size. An edited mask file has new bytes, so a new key."""
        it, p = self.items[item_idx], self.placements[item_idx]
        source = f"file:{it.mask_sha256}" if mask_kind(it) == "file" else f"alpha:{it.sha256}"
        return stable_key(mask=source, bucket=list(p.bucket), resized=list(p.resized),
                          crop=[p.crop_left, p.crop_top], flip=bool(flip), latent=list(self.latent_size(item_idx)),
                          **box_part(p))

    def keys(self, flips: tuple[bool, ...]) -> list[tuple[int, bool, str]]:
        """(item index, flip, key) of every mask an epoch can ask for (none when masked loss is off)."""
        return [(i, f, self.key(i, f)) for i in range(len(self.items)) if self.has(i) for f in flips]

    def pixels(self, item_idx: int, flip: bool = False):
        """The item's mask as an "L" image at its bucket size, through the very resize, crop and flip of
        its pixels (the bytes checked against the scan's hashes, as the image's are)."""
        it = self.items[item_idx]
        data = read_checked(it.path, it.sha256)
        # a sidecar lies beside its image (mask_file is relative to the scanned folder, the dataset's or reg's)
        mask_path = it.path.parent / PurePosixPath(it.mask_file).name if it.mask_file else None
        mask_data = read_checked(mask_path, it.mask_sha256) if mask_path is not None else None
        _, mask = load_mask(it.path, data, mask_path, mask_data, self.background)
        # the bucket placement follows from the size alone: the image's and its mask's are the same
        mask, p = self.buckets.apply(mask, it.crop_box, it.focus)
        if p != self.placements[item_idx]:
            raise ImageError(it.path, "the image's size changed since the dataset was scanned; restart to rescan it")
        return ImageOps.mirror(mask) if flip else mask

    def tensor(self, item_idx: int, flip: bool = False) -> torch.Tensor:
        """[1, h, w] in [0, 1] at latent resolution: the bucket-size mask averaged over each latent pixel's
        area (a latent pixel half under the mask weighs 0.5)."""
        arr = np.asarray(self.pixels(item_idx, flip), dtype=np.float32) / 255.0
        full = torch.from_numpy(arr.copy())[None, None]
        return F.interpolate(full, size=self.latent_size(item_idx), mode="area")[0]
