"""Scorers for the demo that need no downloaded model: hand-made image measures.

- colour and shape of a generated shape image (background from the border, foreground = pixels far
  from it, colour = nearest palette entry of the foreground mean, shape = fill ratio of the largest
  blob in its bounding box: square ≈ 1, circle ≈ π/4, triangle ≈ 1/2);
- the concept: share of spectral energy of the image that lies at the zkq stripes' orientation
  (diagonal, frequency along +x+y) in the stripes' frequency band;
- prior drift: mean absolute pixel difference between two sets of images drawn at the same seeds.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from trainer.demo.shapes import BACKGROUNDS, COLOURS, RES

FG_DISTANCE = 90.0  # RGB distance from the background that makes a pixel foreground
MIN_BLOB = 25  # pixels; below this there is no shape to judge
SQUARE_FILL, TRIANGLE_FILL = 0.90, 0.64  # fill-ratio cut points between the three shapes
STRIPE_BAND = (3.0, 10.0)  # cycles per 64 px: periods of 6.4–21 px
STRIPE_WEDGE_DEG = 15.0
STRIPED_THRESHOLD = 0.6  # share of in-band energy in the wedge; checkerboards (both diagonals) give 0.5


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array of shape {arr.shape}")
    return arr


def background_of(arr: np.ndarray) -> str:
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    med = np.median(border, axis=0)
    return min(BACKGROUNDS, key=lambda b: float(np.sum((med - np.array(BACKGROUNDS[b])) ** 2)))


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        blob, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            blob.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


@dataclass(frozen=True)
class ShapeReading:
    background: str
    colour: str | None  # None: no foreground found
    shape: str | None
    fill: float


def read_shape(image: Image.Image | np.ndarray) -> ShapeReading:
    """What a generated shape image shows: background, foreground colour, shape."""
    arr = as_array(image)
    bg = background_of(arr)
    dist = np.sqrt(np.sum((arr - np.array(BACKGROUNDS[bg], dtype=np.float32)) ** 2, axis=2))
    blob = _largest_blob(dist > FG_DISTANCE)
    if blob.sum() < MIN_BLOB:
        return ShapeReading(bg, None, None, 0.0)
    mean = arr[blob].mean(axis=0)
    colour = min(COLOURS, key=lambda c: float(np.sum((mean - np.array(COLOURS[c])) ** 2)))
    ys, xs = np.nonzero(blob)
    fill = float(blob.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    shape = "square" if fill >= SQUARE_FILL else "circle" if fill >= TRIANGLE_FILL else "triangle"
    return ShapeReading(bg, colour, shape, fill)


def diagonal_stripe_share(image: Image.Image | np.ndarray) -> float:
    """Share of the in-band spectral energy whose frequency points along the zkq stripes' normal
    (+x+y, i.e. stripes along x + y = const). Plain shapes, horizontal/vertical stripes and the other
    diagonal score low; the concept scores near 1."""
    arr = as_array(image)
    arr = arr - arr.mean(axis=(0, 1), keepdims=True)
    power = sum(np.abs(np.fft.fft2(arr[..., c])) ** 2 for c in range(3))
    n = arr.shape[0]
    f = np.fft.fftfreq(n) * n
    fy, fx = np.meshgrid(f, f, indexing="ij")
    radius = np.hypot(fx, fy)
    band = (radius >= STRIPE_BAND[0] * n / RES) & (radius <= STRIPE_BAND[1] * n / RES)
    # orientation of the frequency, folded to [0, 180): the zkq normal (1, 1) is at 45°
    angle = np.degrees(np.arctan2(fy, fx)) % 180.0
    wedge = band & (np.abs(angle - 45.0) <= STRIPE_WEDGE_DEG)
    total = float(power[band].sum())
    return float(power[wedge].sum() / total) if total > 0 else 0.0


def is_striped(image: Image.Image | np.ndarray) -> bool:
    return diagonal_stripe_share(image) >= STRIPED_THRESHOLD


def concept_score(images: list) -> float:
    """Share of images that show the zkq stripes."""
    return float(np.mean([is_striped(im) for im in images])) if images else 0.0


def attribute_accuracy(images: list, specs: list[tuple[str, str, str]]) -> dict[str, float]:
    """Accuracy of colour, shape and background against (shape, colour, background) requested."""
    readings = [read_shape(im) for im in images]
    n = max(len(specs), 1)
    return {"colour": sum(r.colour == c for r, (_, c, _) in zip(readings, specs)) / n,
            "shape": sum(r.shape == s for r, (s, _, _) in zip(readings, specs)) / n,
            "background": sum(r.background == b for r, (_, _, b) in zip(readings, specs)) / n}


def mean_abs_difference(images_a: list, images_b: list) -> float:
    """Mean absolute pixel difference (0–255 scale) between paired images."""
    if len(images_a) != len(images_b) or not images_a:
        raise ValueError("need two equally long, non-empty image lists")
    return float(np.mean([np.abs(as_array(a) - as_array(b)).mean() for a, b in zip(images_a, images_b)]))
