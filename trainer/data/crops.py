"""A training image's crop box and focus point: the sidecar `<stem>.crop.json` beside the image (torch-free, so
the studio reads what the trainer reads).

    {"box": [x0, y0, x1, y1]}   the part of the picture to train on, as fractions 0–1 of the upright image
                                (EXIF orientation applied, as the user sees it): left, top, right, bottom
    {"focus": [fx, fy]}         the point the bucket's crop keeps in view, instead of the centre; fractions of
                                the upright image, like the box (not of the box)

Either key or both. Without a sidecar an image is placed as always: whole, centre-cropped to its bucket. A box
picks the bucket by its own shape; the focus point moves the bucket's crop as far towards it as the picture
allows. A sidecar that cannot be used is reported by the scan and the image trains uncropped.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

CROP_SUFFIX = ".crop.json"
MAX_BYTES = 4096  # a crop file holds six numbers; anything much larger is not one


class CropError(ValueError):
    """A crop sidecar that cannot be used; `reason` says why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass(frozen=True)
class Crop:
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1), fractions of the upright image
    focus: tuple[float, float] | None = None  # (fx, fy), fractions of the upright image


def crop_image_stem(name: str) -> str | None:
    """The stem of the image a file name is the crop sidecar of (`cat.crop.json` → `cat`), else None."""
    if not name.lower().endswith(CROP_SUFFIX) or len(name) == len(CROP_SUFFIX):
        return None
    return name[:-len(CROP_SUFFIX)]


def crop_file_name(image_name: str) -> str:
    """`cat.png` → `cat.crop.json`."""
    return os.path.splitext(image_name)[0] + CROP_SUFFIX


def _fractions(path: Path, key: str, value, n: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n:
        raise CropError(path, f'"{key}" must be a list of {n} numbers')
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CropError(path, f'"{key}" must be a list of {n} numbers, not {json.dumps(value)}')
        if not 0.0 <= v <= 1.0:
            raise CropError(path, f'"{key}" value {v:g} is out of range: fractions of the image, 0 to 1')
        out.append(float(v))
    return tuple(out)


def parse_crop(path: str | Path, data: bytes) -> Crop:
    """The crop a sidecar's bytes describe; raises CropError (file + reason) when they are not a usable one."""
    path = Path(path)
    if len(data) > MAX_BYTES:
        raise CropError(path, f"{len(data)} bytes, more than a crop file holds ({MAX_BYTES} at most)")
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CropError(path, f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CropError(path, 'not a crop: expected {"box": [x0, y0, x1, y1]} and/or {"focus": [fx, fy]}')
    unknown = sorted(set(doc) - {"box", "focus"})
    if unknown:
        raise CropError(path, f"unknown key(s) {', '.join(unknown)}: only \"box\" and \"focus\"")
    box = focus = None
    if doc.get("box") is not None:
        box = _fractions(path, "box", doc["box"], 4)
        x0, y0, x1, y1 = box
        if x1 <= x0:
            raise CropError(path, f"box right edge {x1:g} is not right of its left edge {x0:g} (x1 must exceed x0)")
        if y1 <= y0:
            raise CropError(path, f"box bottom edge {y1:g} is not below its top edge {y0:g} (y1 must exceed y0)")
    if doc.get("focus") is not None:
        focus = _fractions(path, "focus", doc["focus"], 2)
        if box is not None and not (box[0] <= focus[0] <= box[2] and box[1] <= focus[1] <= box[3]):
            raise CropError(path, f"focus point {list(focus)} lies outside the box {list(box)}")
    if box is None and focus is None:
        raise CropError(path, 'no "box" and no "focus": delete the file to train the whole image')
    return Crop(box=box, focus=focus)


def read_crop(path: str | Path) -> Crop:
    """Read and check a crop sidecar; CropError when it cannot be used (OSError when it cannot be read)."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    return parse_crop(path, data)


def crop_json(crop: Crop) -> str:
    """The sidecar text for `crop` (what the studio writes)."""
    doc = {}
    if crop.box is not None:
        doc["box"] = [round(v, 6) for v in crop.box]
    if crop.focus is not None:
        doc["focus"] = [round(v, 6) for v in crop.focus]
    return json.dumps(doc) + "\n"


def box_pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """A fractional box in whole pixels of a `width`×`height` image, at least one pixel each way."""
    x0 = min(width - 1, max(0, round(box[0] * width)))
    y0 = min(height - 1, max(0, round(box[1] * height)))
    x1 = max(x0 + 1, min(width, round(box[2] * width)))
    y1 = max(y0 + 1, min(height, round(box[3] * height)))
    return x0, y0, x1, y1


def trained_size(item) -> tuple[int, int]:
    """(width, height) of the part of a scanned image that is trained: its crop box's, else the whole image's."""
    if item.crop_box is None or not item.width or not item.height:
        return item.width, item.height
    x0, y0, x1, y1 = box_pixels(item.crop_box, item.width, item.height)
    return x1 - x0, y1 - y0


def crop_counts(items) -> dict[str, int]:
    """{"box": n, "focus": n} over scanned images (trainer.data.scan.Item): how many have each."""
    return {"box": sum(1 for it in items if it.crop_box is not None),
            "focus": sum(1 for it in items if it.focus is not None)}
