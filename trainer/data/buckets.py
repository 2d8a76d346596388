"""Aspect-ratio buckets (as kohya does them): train each image at the bucket closest to its shape,
instead of squashing or heavily cropping everything to a square.

Bucket sides are multiples of `step` (rounded up to a multiple of 8, so the VAE's /8 latents are whole)
with an area no larger than resolution², no more elongated than `max_aspect`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

LATENT_FACTOR = 8


@dataclass(frozen=True)
class Placement:
    bucket: tuple[int, int]  # (width, height) the image is trained at
    resized: tuple[int, int]  # (width, height) after scaling to cover the bucket
    crop_left: int
    crop_top: int
    original: tuple[int, int]  # (width, height) of the upright source image


def effective_step(step: int) -> int:
    return max(LATENT_FACTOR, math.ceil(step / LATENT_FACTOR) * LATENT_FACTOR)


def make_buckets(resolution: int, step: int, max_aspect: float) -> list[tuple[int, int]]:
    """All (width, height) buckets, sorted by aspect ratio (tallest first)."""
    step = effective_step(step)
    area = resolution * resolution
    side = max(step, resolution // step * step)
    sizes = {(side, side)}
    w = step
    while w <= resolution * max_aspect + step:
        h = (area // w) // step * step
        if h >= step and max(w, h) / min(w, h) <= max_aspect + 1e-9:
            sizes.add((w, h))
            sizes.add((h, w))
        w += step
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0] * s[1]))


class Buckets:
    """The bucket set for one run; `enabled=False` means one square bucket of the resolution."""

    def __init__(self, resolution: int, step: int = 64, max_aspect: float = 2.0, enabled: bool = True):
        self.resolution = resolution
        self.enabled = enabled
        self.step = effective_step(step)
        self.max_aspect = max_aspect
        if enabled:
            self.sizes = make_buckets(resolution, step, max_aspect)
        else:
            side = max(LATENT_FACTOR, resolution // LATENT_FACTOR * LATENT_FACTOR)
            self.sizes = [(side, side)]
        self._log_ars = [math.log(w / h) for w, h in self.sizes]

    def assign(self, width: int, height: int) -> tuple[int, int]:
        """The bucket whose aspect ratio is closest (in log space, so 2:1 and 1:2 are equally far from 1:1)."""
        if len(self.sizes) == 1:
            return self.sizes[0]
        target = math.log(max(width, 1) / max(height, 1))
        best = min(range(len(self.sizes)),
                   key=lambda i: (abs(self._log_ars[i] - target), -self.sizes[i][0] * self.sizes[i][1]))
        return self.sizes[best]

    def place(self, width: int, height: int) -> Placement:
        bw, bh = self.assign(width, height)
        scale = max(bw / width, bh / height)
        rw, rh = max(bw, round(width * scale)), max(bh, round(height * scale))
        return Placement(bucket=(bw, bh), resized=(rw, rh), crop_left=(rw - bw) // 2, crop_top=(rh - bh) // 2,
                         original=(width, height))

    def apply(self, image: Image.Image) -> tuple[Image.Image, Placement]:
        """Scale to cover the bucket, then centre-crop to it."""
        p = self.place(*image.size)
        if image.size != p.resized:
            downscale = p.resized[0] < image.size[0]
            image = image.resize(p.resized, Image.Resampling.LANCZOS if downscale else Image.Resampling.BICUBIC)
        bw, bh = p.bucket
        if image.size != (bw, bh):
            image = image.crop((p.crop_left, p.crop_top, p.crop_left + bw, p.crop_top + bh))
        return image, p

    def info(self, placements: list[tuple[tuple[int, int], tuple[int, int], int]]) -> dict:
        """kohya's ss_bucket_info: {"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": e}
        from (original size, bucket, repeats) triples; counts include repeats, as kohya's do."""
        counts: dict[tuple[int, int], int] = {}
        err = 0.0
        for (w, h), bucket, repeats in placements:
            counts[bucket] = counts.get(bucket, 0) + repeats
            err += abs(w / h - bucket[0] / bucket[1])
        used = [s for s in self.sizes if s in counts]
        return {"buckets": {str(i): {"resolution": list(s), "count": counts[s]} for i, s in enumerate(used)},
                "mean_img_ar_error": err / max(1, len(placements))}
