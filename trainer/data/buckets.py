"""Aspect-ratio buckets (as kohya does them): train each image at the bucket closest to its shape,
instead of squashing or heavily cropping everything to a square.

Bucket sides are multiples of `step` (rounded up to a multiple of 8, so the VAE's /8 latents are whole)
with an area no larger than resolution², no more elongated than `max_aspect`.

An image with a crop box (trainer.data.crops) is first cut to its box, and the box is what gets a bucket; a
focus point moves the bucket's crop towards it instead of centring it. Without either, placement is the
centre crop it always was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from trainer.data.crops import box_pixels

LATENT_FACTOR = 8


@dataclass(frozen=True)
class Placement:
    bucket: tuple[int, int]  # (width, height) the image is trained at
    resized: tuple[int, int]  # (width, height) after scaling to cover the bucket
    crop_left: int
    crop_top: int
    # (width, height) of the upright source image, or of its crop box: the picture the trainer is shown (so
    # also SDXL's original_size)
    original: tuple[int, int]
    box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) pixels of the upright image cut out first


def box_part(p: Placement) -> dict:
    """The crop box as a cache key's part: {} without one, so the keys of uncropped images stay what they were."""
    return {"box": list(p.box)} if p.box is not None else {}


def _offset(centre: float, resized: int, bucket: int) -> int:
    """Where a bucket-wide window starts so that `centre` is as central as the resized side allows. floor, so
    the middle of the picture gives the centre crop's (resized - bucket) // 2."""
    return min(resized - bucket, max(0, math.floor(centre - bucket / 2)))


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

    @classmethod
    def of(cls, cfg) -> "Buckets":
        """The buckets of a run's dataset settings (trainer.config.DatasetSection): the trainer's and the studio's."""
        return cls(cfg.resolution, cfg.bucket_step, cfg.max_aspect, cfg.enable_buckets)

    def assign(self, width: int, height: int) -> tuple[int, int]:
        """The bucket whose aspect ratio is closest (in log space, so 2:1 and 1:2 are equally far from 1:1)."""
        if len(self.sizes) == 1:
            return self.sizes[0]
        target = math.log(max(width, 1) / max(height, 1))
        best = min(range(len(self.sizes)),
                   key=lambda i: (abs(self._log_ars[i] - target), -self.sizes[i][0] * self.sizes[i][1]))
        return self.sizes[best]

    def place(self, width: int, height: int, box: tuple[float, float, float, float] | None = None,
              focus: tuple[float, float] | None = None) -> Placement:
        """Where an upright `width`×`height` image goes: box and focus are fractions of it (trainer.data.crops)."""
        pixel_box = box_pixels(box, width, height) if box is not None else None
        x0, y0, x1, y1 = pixel_box or (0, 0, width, height)
        w, h = x1 - x0, y1 - y0
        bw, bh = self.assign(w, h)
        scale = max(bw / w, bh / h)
        rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
        if focus is None:
            left, top = (rw - bw) // 2, (rh - bh) // 2
        else:  # the focus point in resized pixels, then a window around it
            left = _offset((focus[0] * width - x0) / w * rw, rw, bw)
            top = _offset((focus[1] * height - y0) / h * rh, rh, bh)
        return Placement(bucket=(bw, bh), resized=(rw, rh), crop_left=left, crop_top=top, original=(w, h),
                         box=pixel_box)

    def apply(self, image: Image.Image, box: tuple[float, float, float, float] | None = None,
              focus: tuple[float, float] | None = None) -> tuple[Image.Image, Placement]:
        """Cut to the box (when there is one), scale to cover the bucket, then crop to it (around the focus
        point, else the centre)."""
        p = self.place(*image.size, box=box, focus=focus)
        if p.box is not None:
            image = image.crop(p.box)
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
