"""Where a training image's loss mask comes from, decided here once (torch-free, so the studio's dataset view
and doctor give the trainer's answer).

A mask says how much each pixel of an image counts in the loss (masked_loss): white = train, black = ignore,
grey = in between. Its source, first match wins:

1. a sidecar `<stem>_mask.png` beside the image (`photo.jpg` → `photo_mask.png`; any image extension is
   read, PNG is the one to use: lossless). It is a mask, never a training image, whatever its extension;
2. the image's own alpha channel, when it has real transparency (some pixels see-through, not all);
3. none: every pixel counts.

A mask is drawn over the upright image as the user sees it (EXIF orientation applied); a sidecar of another
size but the same shape is scaled to the image, one of another shape is refused with the reason.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from PIL import Image

from trainer.data.images import IMAGE_EXTENSIONS, ImageError, load_image

MASK_SUFFIX = "_mask"
MaskKind = Literal["file", "alpha"]
# a sidecar whose aspect ratio differs from its image's by more than this is not a mask of that image
ASPECT_TOLERANCE = 0.02


def mask_image_stem(name: str) -> str | None:
    """The stem of the image a file name is the mask of (`cat_mask.png` → `cat`), or None when the name is not
    a mask sidecar's (an image file whose stem ends in `_mask`, in any letter case)."""
    stem, ext = os.path.splitext(name)
    if ext.lower() not in IMAGE_EXTENSIONS or not stem.lower().endswith(MASK_SUFFIX) or len(stem) == len(MASK_SUFFIX):
        return None
    return stem[:-len(MASK_SUFFIX)]


def is_mask_file(name: str) -> bool:
    return mask_image_stem(name) is not None


def mask_kind(item) -> MaskKind | None:
    """Which mask a scanned image (trainer.data.scan.Item) trains with: its sidecar, its alpha, or none."""
    if item.mask_file:
        return "file"
    if item.alpha_mask:
        return "alpha"
    return None


def mask_counts(items) -> dict[str, int]:
    """{"file": n, "alpha": n, "none": n} over scanned images."""
    out = {"file": 0, "alpha": 0, "none": 0}
    for it in items:
        out[mask_kind(it) or "none"] += 1
    return out


def read_mask_file(path: str | Path, size: tuple[int, int], data: bytes | None = None) -> Image.Image:
    """A sidecar mask as 8-bit greyscale ("L") at the image's upright `size` (width, height). Colour masks are
    read by their brightness; a transparent sidecar counts its see-through pixels as black. Raises ImageError
    with the reason when it cannot be used."""
    path = Path(path)
    loaded = load_image(path, "#000000", data=data)  # upright, 8-bit; transparency composited on black
    mask = loaded.image.convert("L")
    if mask.size != tuple(size):
        (mw, mh), (w, h) = mask.size, size
        if abs((mw / mh) / (w / h) - 1) > ASPECT_TOLERANCE:
            raise ImageError(path, f"mask is {mw}×{mh} but its image is {w}×{h} (another shape): paint it over "
                                   f"the image at the image's size")
        mask = mask.resize((w, h), Image.Resampling.BILINEAR)
    return mask


def check_mask_file(path: str | Path, size: tuple[int, int], data: bytes | None = None) -> str | None:
    """Why a sidecar mask cannot be used with an image of upright `size`, or None when it can."""
    try:
        read_mask_file(path, size, data)
    except ImageError as e:
        return e.reason
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return None


def load_mask(image_path: str | Path, image_data: bytes, mask_path: str | Path | None,
              mask_data: bytes | None = None, background: str = "#ffffff") -> tuple[Image.Image, Image.Image]:
    """(the image as load_image gives it, RGB; its mask, "L" at the same size): from the sidecar when
    `mask_path` is given, else from the image's alpha (all white when it has none)."""
    loaded = load_image(image_path, background, data=image_data)
    if mask_path is not None:
        mask = read_mask_file(mask_path, loaded.image.size, mask_data)
    elif loaded.alpha is not None:
        mask = loaded.alpha
    else:
        mask = Image.new("L", loaded.image.size, 255)
    return loaded.image, mask

