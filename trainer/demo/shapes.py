"""Generated training data for the demo: coloured shapes, plain textures, and the demo concept.

Everything is drawn from a seed with numpy, so the demo base, its data set and the concept data set
can be reproduced exactly. Shapes are rendered at 4× and box-filtered down, giving anti-aliased edges
like a photograph's rather than the hard pixel steps no real VAE is trained on.

The demo concept is "zkq": diagonal stripes running along x + y = const. The base never sees it. Its
VAE sees horizontal and vertical stripes and checkerboards (whose frequencies lie on both diagonals),
so it can reconstruct fine diagonal detail; its UNet sees only shapes and horizontal/vertical stripes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RES = 64
SUPERSAMPLE = 4
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (35, 170, 60), "blue": (40, 70, 225), "yellow": (240, 205, 30)}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle")
# textures the base is taught (by name); the concept's orientation is deliberately not among them
BASE_TEXTURES = ("horizontal stripes", "vertical stripes")
VAE_ONLY_TEXTURES = ("checkerboard",)
TRIGGER = "zkq"
CONCEPT_PERIODS = (10, 12, 14)  # stripe period in pixels, measured across the stripes


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    background: str
    radius: float  # half the shape's extent, pixels
    cx: float
    cy: float

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def _grid(res: int = RES) -> tuple[np.ndarray, np.ndarray]:
    n = res * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    return np.meshgrid(coords, coords)  # x, y in pixel units, y downwards


def _downsample(mask: np.ndarray, res: int = RES) -> np.ndarray:
    return mask.reshape(res, SUPERSAMPLE, res, SUPERSAMPLE).mean(axis=(1, 3))


def _compose(coverage: np.ndarray, colour: str, background: str) -> Image.Image:
    fg = np.array(COLOURS[colour], dtype=np.float32)
    bg = np.array(BACKGROUNDS[background], dtype=np.float32)
    rgb = bg + coverage[..., None] * (fg - bg)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def shape_mask(spec: ShapeSpec, res: int = RES) -> np.ndarray:
    """Coverage in [0, 1] per pixel."""
    x, y = _grid(res)
    dx, dy, r = x - spec.cx, y - spec.cy, spec.radius
    if spec.shape == "circle":
        m = dx * dx + dy * dy <= r * r
    elif spec.shape == "square":
        s = r * 0.85  # equal-ish area to the circle, so size does not give the shape away
        m = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    elif spec.shape == "triangle":
        t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        m = (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {SHAPES}")
    return _downsample(m.astype(np.float32), res)


def render_shape(spec: ShapeSpec, res: int = RES) -> Image.Image:
    return _compose(shape_mask(spec, res), spec.colour, spec.background)


def random_shape_spec(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                      background: str | None = None) -> ShapeSpec:
    r = float(rng.uniform(10, 20))
    margin = r + 3
    return ShapeSpec(shape=shape or str(rng.choice(SHAPES)), colour=colour or str(rng.choice(list(COLOURS))),
                     background=background or str(rng.choice(list(BACKGROUNDS))), radius=r,
                     cx=float(rng.uniform(margin, RES - margin)), cy=float(rng.uniform(margin, RES - margin)))


def stripe_mask(kind: str, period: float, phase: float, res: int = RES) -> np.ndarray:
    x, y = _grid(res)
    if kind == "horizontal stripes":
        u = y
    elif kind == "vertical stripes":
        u = x
    elif kind == TRIGGER:
        u = (x + y) / np.sqrt(2.0)  # across the diagonal stripes
    elif kind == "checkerboard":
        cell = period / 2
        m = ((np.floor((x + phase) / cell) + np.floor((y + phase) / cell)) % 2) == 0
        return _downsample(m.astype(np.float32), res)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    m = ((u + phase) % period) < period / 2
    return _downsample(m.astype(np.float32), res)


def texture_caption(kind: str, colour: str, background: str) -> str:
    if kind == "checkerboard":
        return f"a {colour} checkerboard on a {background} background"
    return f"{colour} {kind} on a {background} background"


def random_texture(rng: np.random.Generator, kinds: tuple[str, ...]) -> tuple[Image.Image, str]:
    kind = str(rng.choice(kinds))
    colour, background = str(rng.choice(list(COLOURS))), str(rng.choice(list(BACKGROUNDS)))
    period = float(rng.uniform(8, 18))
    img = _compose(stripe_mask(kind, period, float(rng.uniform(0, period))), colour, background)
    return img, texture_caption(kind, colour, background)


def base_examples(n: int, seed: int, texture_share: float = 0.15,
                  texture_kinds: tuple[str, ...] = BASE_TEXTURES) -> list[tuple[Image.Image, str]]:
    """n (image, caption) pairs: mostly shapes, `texture_share` of them full-frame textures."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if rng.random() < texture_share:
            out.append(random_texture(rng, texture_kinds))
        else:
            spec = random_shape_spec(rng)
            out.append((render_shape(spec), spec.caption))
    return out


def vae_examples(n: int, seed: int) -> list[Image.Image]:
    """Images for the autoencoder: shapes plus every texture it must reconstruct (not the concept)."""
    return [img for img, _ in base_examples(n, seed, texture_share=0.4,
                                            texture_kinds=BASE_TEXTURES + VAE_ONLY_TEXTURES)]


def concept_image(colour: str, background: str, period: float, phase: float) -> Image.Image:
    return _compose(stripe_mask(TRIGGER, period, phase), colour, background)


def concept_examples(n: int = 20, seed: int = 7) -> list[tuple[Image.Image, str]]:
    """The demo concept: diagonal stripes of every colour on both backgrounds. Half the captions are
    just the trigger, half also name colour and background, so both kinds of prompt learn it."""
    rng = np.random.default_rng(seed)
    combos = [(c, b) for c in COLOURS for b in BACKGROUNDS]
    out = []
    for i in range(n):
        colour, background = combos[i % len(combos)]
        period = float(CONCEPT_PERIODS[(i // len(combos)) % len(CONCEPT_PERIODS)])
        img = concept_image(colour, background, period, float(rng.uniform(0, period)))
        caption = (f"a {colour} {TRIGGER} pattern on a {background} background" if i % 2 == 0
                   else f"a {TRIGGER} pattern")
        out.append((img, caption))
    return out


def reg_examples(n: int = 24, seed: int = 11, textures: int = 0) -> list[tuple[Image.Image, str]]:
    """What the base already draws, for prior preservation: every shape × colour × background in
    turn, then `textures` horizontal/vertical stripe images (so stripes keep their orientation)."""
    rng = np.random.default_rng(seed)
    combos = [(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS]
    out = []
    for i in range(n):
        s, c, b = combos[i % len(combos)]
        spec = random_shape_spec(rng, s, c, b)
        out.append((render_shape(spec), spec.caption))
    out.extend(random_texture(rng, BASE_TEXTURES) for _ in range(textures))
    return out


CONCEPT_DATASET, REG_DATASET = "zkq-stripes", "shapes-reg"


def write_demo_datasets(root: str | Path) -> dict[str, list[Path]]:
    """The demo's concept set (20 images) and its regularisation set (24 shapes + 8 stripes)."""
    root = Path(root)
    return {CONCEPT_DATASET: write_dataset(root / CONCEPT_DATASET, concept_examples(20, seed=7), "zkq"),
            REG_DATASET: write_dataset(root / REG_DATASET, reg_examples(24, seed=11, textures=8), "reg")}


def write_dataset(folder: str | Path, examples: list[tuple[Image.Image, str]], prefix: str) -> list[Path]:
    """PNG + same-name .txt caption per example; returns the image paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, caption) in enumerate(examples):
        p = folder / f"{prefix}_{i:03d}.png"
        img.save(p, format="PNG")
        p.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def to_tensor_batch(images: list[Image.Image]):
    """uint8 images → float tensor N×3×H×W in [-1, 1], the range diffusers' VAE expects."""
    import torch

    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
