"""Open any image a user may drop into a dataset and hand back one thing: an upright 8-bit RGB picture.

Cameras, phones, editors and web exports disagree on orientation, colour mode, alpha and bit depth;
a trainer that only handles RGB JPEGs silently learns black backgrounds, sideways faces or white-out
16-bit scans. Every fix made here is reported as a note so the dataset doctor can show it.
"""
from __future__ import annotations

import hashlib

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

# Our own ceiling, checked from the header before any pixel is decoded (Pillow's global limit is left
# alone so that other code in the process is unaffected). ~134 MP covers 100 MP medium-format cameras.
MAX_PIXELS = 128 * 1024 * 1024
TINY_SIDE = 64
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                              ".avif", ".jp2", ".tga", ".ppm", ".pgm", ".pnm"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I;16S"})


class ImageError(ValueError):
    """An image that cannot be used; `reason` says why in words a user understands."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass
class LoadedImage:
    image: Image.Image  # RGB, 8 bit, upright
    notes: list[str] = field(default_factory=list)
    original_mode: str = ""
    frames: int = 1
    # the upright alpha channel ("L") when the file has real transparency (some pixels see-through, not all):
    # a mask source for masked loss (trainer.data.masks); None for opaque or fully transparent images
    alpha: Image.Image | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def tiny(self) -> bool:
        return min(self.image.size) < TINY_SIDE


def parse_background(background: str | tuple) -> tuple[int, int, int]:
    if isinstance(background, tuple):
        return tuple(int(c) for c in background[:3])  # type: ignore[return-value]
    try:
        rgb = ImageColor.getrgb(background)
    except ValueError:
        raise ValueError(f"background colour {background!r} is not a colour (use e.g. #ffffff or white)") from None
    return rgb[:3]


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns between its two limits; ours decides, below, from the header size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data) if data is not None else path)
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"refused as a possible decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(path, _not_an_image_reason(path, data)) from None
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageError(path, f"not a readable image: it claims a size of {w}×{h}")
    if w * h > MAX_PIXELS:
        im.close()
        raise ImageError(path, f"refused as a possible decompression bomb: it claims {w}×{h} = {w * h:,} pixels "
                               f"(limit {MAX_PIXELS:,})")
    return im


def _not_an_image_reason(path: Path, data: bytes | None = None) -> str:
    try:
        if data is None:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(512)
        else:
            size, head = len(data), data[:512]
    except OSError as e:
        return f"cannot read: {e.strerror}"
    if size == 0:
        return "not a readable image: the file is empty (0 bytes)"
    low = head.lstrip().lower()
    if low.startswith(b"<?xml") or b"<svg" in low:
        return "not a readable image: it is an SVG (vector) file; export it as PNG"
    if low.startswith(b"<!doctype html") or low.startswith(b"<html"):
        return "not a readable image: it is an HTML page (a failed download?)"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "not a readable image: HEIC/HEIF is not supported; export it as JPEG or PNG"
    try:
        head.decode("utf-8")
        return "not a readable image: it is a text file with an image extension"
    except UnicodeDecodeError:
        pass
    return "not a readable image: unknown or corrupt format"


def _to_8bit(im: Image.Image, notes: list[str]) -> Image.Image:
    """16/32-bit integer and float greyscale to 8 bit, keeping brightness (a plain convert clips at 255)."""
    arr = np.asarray(im)
    if im.mode in SIXTEEN_BIT_MODES:
        out = arr.astype(np.float64) / 257.0
        notes.append(f"16-bit image ({im.mode}) scaled to 8 bit")
    else:
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode == "I" and lo >= 0 and hi <= 255:
            out = arr.astype(np.float64)
            notes.append("32-bit integer image holds 8-bit values; used as is")
        elif im.mode == "I" and lo >= 0 and hi <= 65535:
            out = arr.astype(np.float64) / 257.0
            notes.append("32-bit integer image holds 16-bit values; scaled to 8 bit")
        elif im.mode == "F" and lo >= 0 and hi <= 1.0:
            out = arr.astype(np.float64) * 255.0
            notes.append("floating-point image (0–1) scaled to 8 bit")
        else:
            span = (hi - lo) or 1.0
            out = (arr.astype(np.float64) - lo) * (255.0 / span)
            notes.append(f"{im.mode} image with values {lo:g}..{hi:g} stretched to 8 bit")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def _composite(im: Image.Image, bg: tuple[int, int, int], notes: list[str]) -> Image.Image:
    if im.mode == "La":
        im = im.convert("LA")
    rgba = im.convert("RGBA")
    alpha = rgba.getchannel("A")
    lo, hi = alpha.getextrema()
    if hi == 0:
        notes.append("fully transparent image: it is only the background colour now")
    elif lo < 255:
        notes.append(f"transparency composited on {'#%02x%02x%02x' % bg}")
    else:
        return rgba.convert("RGB")
    base = Image.new("RGBA", rgba.size, bg + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def normalise(im: Image.Image, background: str | tuple = "#ffffff", notes: list[str] | None = None) -> Image.Image:
    """Mode, alpha and bit depth to 8-bit RGB (orientation is handled by load_image, before this)."""
    notes = [] if notes is None else notes
    bg = parse_background(background)
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _to_8bit(im, notes).convert("RGB")
    if mode == "1":
        notes.append("1-bit black-and-white image converted to RGB")
        return im.convert("RGB")
    if _has_alpha(im):
        if mode == "P" or mode == "PA":
            notes.append("palette image with transparency")
        return _composite(im, bg, notes)
    if mode == "RGB":
        return im
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB (colours may shift slightly)")
    elif mode == "L":
        notes.append("greyscale image converted to RGB")
    elif mode != "P":
        notes.append(f"{mode} image converted to RGB")
    return im.convert("RGB")


def load_image(path: str | Path, background: str | tuple = "#ffffff", data: bytes | None = None) -> LoadedImage:
    """Read an image file as upright 8-bit RGB; raise ImageError (file + reason) when it cannot be used.
    `data`, when given, is the file's bytes already read (so a caller can hash exactly what is decoded)."""
    path = Path(path)
    bg = parse_background(background)  # a bad colour is a config error, not this file's fault
    notes: list[str] = []
    src = im = _open(path, data)
    try:
        frames = getattr(im, "n_frames", 1) or 1
        if frames > 1:
            im.seek(0)
            notes.append(f"animated image ({frames} frames): only the first frame is used")
        original_mode = im.mode
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            msg = str(e)
            if "truncated" in msg.lower():
                raise ImageError(path, "truncated: the file ends before the image does (incomplete download or copy?)") from None
            raise ImageError(path, f"corrupt image data: {msg}") from None
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block must not cost the picture
            orientation = 1
            notes.append("EXIF data unreadable; orientation not applied")
        if orientation not in (None, 1):
            if orientation in range(2, 9):
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            else:
                notes.append(f"EXIF orientation {orientation} is not a valid value; ignored")
        alpha = partial_alpha(im)
        try:
            rgb = normalise(im, bg, notes)
        except (ValueError, OSError) as e:  # a colour mode Pillow cannot convert
            raise ImageError(path, f"unsupported colour mode {im.mode}: {e}") from None
        # detach from the file so nothing holds it open
        rgb = rgb.copy() if rgb is src else rgb
    finally:
        src.close()
    w, h = rgb.size
    if min(w, h) < TINY_SIDE:
        notes.append(f"tiny image ({w}×{h}, shortest side under {TINY_SIDE} px): it will be upscaled and blurry")
    return LoadedImage(image=rgb, notes=notes, original_mode=original_mode, frames=frames, alpha=alpha)


def partial_alpha(im: Image.Image) -> Image.Image | None:
    """The alpha channel of an upright image when it is neither fully opaque nor fully transparent, else None."""
    if not _has_alpha(im) or im.mode in SIXTEEN_BIT_MODES or im.mode in ("I", "F", "1"):
        return None
    try:
        alpha = (im.convert("LA") if im.mode == "La" else im).convert("RGBA").getchannel("A")
    except (ValueError, OSError):  # a mode Pillow cannot convert: normalise() reports it
        return None
    lo, hi = alpha.getextrema()
    return alpha if lo < 255 and hi > 0 else None


def probe_size(path: str | Path) -> tuple[int, int]:
    """Upright (width, height) from the header alone, without decoding pixels."""
    path = Path(path)
    im = _open(path)
    try:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
    finally:
        im.close()
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_checked(path, sha256: str) -> bytes:
    """A dataset file's bytes, refused when they are not the ones the scan hashed."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(path, f"cannot read: {e.strerror or e} (removed since the scan?)") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ImageError(path, "the file changed since the dataset was scanned; restart to rescan it")
    return data
