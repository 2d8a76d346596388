"""Find the usable images of a dataset folder, their captions and repeat counts, and say what is wrong.

Layout (kohya-compatible): images with same-name caption sidecars (a.png + a.txt), in the folder itself
and/or in subfolders; a top-level subfolder named `N_name` repeats its images N times per epoch.
Nothing here is fatal for one bad file: it is reported as a Problem and skipped. Only a dataset with no
usable image at all raises DatasetError.

A file named `<stem>_mask.png` (any image extension) is the loss mask of the image `<stem>` beside it, never a
training image (trainer.data.masks says where masks come from). A file named `<stem>.crop.json` is its crop box
and/or focus point (trainer.data.crops), never a caption.

This module is the one definition of what counts as a dataset image, which caption and mask belong to it and
how often it repeats: the studio's Dataset tab lists datasets with `list_dataset` (same walk, no pixels decoded), so what
it shows is what the trainer uses. Torch-free on purpose.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.data.captions import read_caption, split_tags
from trainer.data.crops import CropError, crop_counts, crop_image_stem, read_crop, trained_size
from trainer.data.images import IMAGE_EXTENSIONS, TINY_SIDE, ImageError, load_image, probe_size
from trainer.data.masks import check_mask_file, mask_counts, mask_image_stem

Severity = Literal["error", "warning", "note"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "note": 2}
CACHE_DIR_NAME = ".atelier-cache"
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
# caption sidecars after the configured extension, in this order (kohya reads .caption and .txt)
CAPTION_EXTENSIONS = (".caption", ".txt")
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", ".directory", "icon\r"})
SYSTEM_DIRS = frozenset({"__macosx", "@eadir", "$recycle.bin", "system volume information", "__pycache__"})
UNSUPPORTED_IMAGES = {
    ".svg": "an SVG (vector) file; export it as PNG", ".svgz": "an SVG (vector) file; export it as PNG",
    ".psd": "a Photoshop file; export it as PNG", ".xcf": "a GIMP file; export it as PNG",
    ".kra": "a Krita file; export it as PNG", ".heic": "HEIC is not supported; export it as JPEG or PNG",
    ".heif": "HEIF is not supported; export it as JPEG or PNG", ".raw": "a camera RAW file; export it as JPEG",
    ".cr2": "a camera RAW file; export it as JPEG", ".cr3": "a camera RAW file; export it as JPEG",
    ".nef": "a camera RAW file; export it as JPEG", ".arw": "a camera RAW file; export it as JPEG",
    ".dng": "a camera RAW file; export it as JPEG", ".exr": "an HDR/EXR file; tone-map it to PNG",
    ".hdr": "an HDR file; tone-map it to PNG", ".ai": "an Illustrator file; export it as PNG",
    ".eps": "a PostScript file; export it as PNG", ".pdf": "a PDF; export its pages as PNG",
}


class DatasetError(ValueError):
    """No usable image in the dataset (the message names the folder); `problems` holds the per-file reasons."""

    def __init__(self, message: str, problems: list["Problem"] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass
class Problem:
    file: str  # relative to the dataset root; "" for the dataset as a whole
    reason: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.severity}: {self.file or '(dataset)'}: {self.reason}"


@dataclass
class Item:
    path: Path
    rel: str
    caption: str
    repeats: int
    folder: str
    is_reg: bool = False
    sha256: str = ""  # of the file's bytes: the cache key and the duplicate check
    width: int = 0  # upright, after EXIF orientation
    height: int = 0
    caption_file: str | None = None  # relative path of the sidecar, None when missing
    notes: list[str] = field(default_factory=list)
    mask_file: str | None = None  # relative path of its `<stem>_mask.png`, None when it has none (or it is unusable)
    mask_sha256: str = ""  # of the mask file's bytes: part of the mask cache key, so an edited mask is re-read
    alpha_mask: bool = False  # the image has real transparency (found when its pixels are decoded)
    # its `<stem>.crop.json` (trainer.data.crops), fractions of the upright image; None without one (or when it
    # is unusable). The values go into the placement, and so into the latent and mask cache keys.
    crop_file: str | None = None
    crop_box: tuple[float, float, float, float] | None = None
    focus: tuple[float, float] | None = None


@dataclass
class Scan:
    root: Path
    items: list[Item]
    problems: list[Problem]
    caption_ext: str = ".txt"

    @property
    def folders(self) -> dict[str, dict[str, int]]:
        """{folder: {"n_repeats": N, "img_count": M}}: kohya's ss_dataset_dirs; folder names only."""
        out: dict[str, dict[str, int]] = {}
        for it in self.items:
            d = out.setdefault(it.folder, {"n_repeats": it.repeats, "img_count": 0})
            d["img_count"] += 1
        return out

    @property
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """{folder: {tag: images whose caption has it}}: kohya's ss_tag_frequency."""
        out: dict[str, dict[str, int]] = {}
        for it in self.items:
            counts = out.setdefault(it.folder, {})
            for tag in dict.fromkeys(t.lower() for t in split_tags(it.caption)):
                counts[tag] = counts.get(tag, 0) + 1
        return out

    @property
    def num_images(self) -> int:
        return len(self.items)

    @property
    def num_samples(self) -> int:
        """Images times their repeats: samples per epoch."""
        return sum(it.repeats for it in self.items)

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def _nfc(name: str) -> str:
    # macOS writes decomposed names (NFD); a caption typed elsewhere may be composed (NFC)
    return unicodedata.normalize("NFC", name)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _valid_name(rel: str) -> bool:
    try:
        rel.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False


def _printable(rel: str) -> str:
    return rel.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


RACY_NS = 3 * 10**9


def settled(mtime_ns: int, now_ns: int | None = None) -> bool:
    """A file last written over RACY_NS before `now_ns` (now): written again, its mtime changes. A newer one could
    be rewritten within one timestamp tick (coarse clocks; FAT's is 2 s) at the same size, its stat unchanged, so
    what was read from it is not remembered by its stat (git's racy-clean rule)."""
    return mtime_ns < (time.time_ns() if now_ns is None else now_ns) - RACY_NS


def decode_image(path: Path, background: str, decoded: dict | None) -> tuple[str, int, int, list[str], bool]:
    """(sha256, width, height, notes, has transparency) of an image, its pixels decoded; raises ImageError.
    With `decoded` (a dict the caller keeps), remembered by the file's identity (inode, size, mtime): the
    studio's doctor re-scans after every caption edit, and decoding every picture again was nearly all of it."""
    key = None
    if decoded is not None:
        st = path.stat()
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, background)
        hit = decoded.get(key)
        if isinstance(hit, str):
            raise ImageError(path, hit)
        if hit is not None:
            sha, width, height, notes, alpha = hit
            return sha, width, height, list(notes), alpha
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        loaded = load_image(path, background, data=data)
    except ImageError as e:
        if key is not None and settled(key[3]):
            decoded[key] = e.reason
        raise
    width, height = loaded.size
    alpha = loaded.alpha is not None
    loaded.image.close()
    if key is not None and settled(key[3]):
        decoded[key] = (sha, width, height, tuple(loaded.notes), alpha)
    return sha, width, height, list(loaded.notes), alpha


class _Scanner:
    def __init__(self, root: Path, caption_ext: str, default_repeats: int, check_images: bool, is_reg: bool,
                 background: str, open_images: bool = True, decoded: dict | None = None):
        if not caption_ext.startswith("."):
            caption_ext = "." + caption_ext
        self.root = root
        self.caption_exts = list(dict.fromkeys([caption_ext.lower(), *CAPTION_EXTENSIONS]))
        self.caption_ext = caption_ext
        self.default_repeats = default_repeats
        self.check_images = check_images
        self.open_images = open_images  # False: list files and read captions only (sizes 0, no hash)
        self.is_reg = is_reg
        self.background = background
        self.items: list[Item] = []
        self.problems: list[Problem] = []
        self.rejected = 0
        self.image_files = 0
        self.ignored: dict[str, list[str]] = {}
        self.seen_hash: dict[str, str] = {}
        self.decoded = decoded

    def add(self, rel: str, reason: str, severity: Severity) -> None:
        self.problems.append(Problem(_printable(rel), reason, severity))

    def folder_of(self, rel_dir: str) -> tuple[str, int | None]:
        """(folder key, repeats or None when the folder is to be skipped)."""
        if rel_dir in ("", "."):
            name = self.root.name or "."
            return name, self.default_repeats
        top = rel_dir.split("/", 1)[0]
        m = REPEAT_FOLDER.match(top)
        if not m:
            return top, self.default_repeats
        n = int(m.group(1))
        return top, (n if n > 0 else None)

    def run(self) -> None:
        skipped_folders: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            d = Path(dirpath)
            rel_dir = d.relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            keep = []
            for name in sorted(dirnames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if name == CACHE_DIR_NAME:
                    continue  # our own latent cache: not part of the dataset, not worth a word
                if name.lower() in SYSTEM_DIRS:
                    self.add(rel + "/", "system folder skipped (e.g. macOS zip metadata)", "note")
                elif name.startswith("."):
                    self.add(rel + "/", "hidden folder skipped", "note")
                else:
                    keep.append(name)
            dirnames[:] = keep
            folder, repeats = self.folder_of(rel_dir)
            if repeats is None:
                if folder not in skipped_folders:
                    skipped_folders.add(folder)
                    self.add(folder + "/", "repeat count 0 in the folder name: its images are not used", "warning")
                continue
            self.scan_dir(d, rel_dir, sorted(filenames), folder, repeats)
        for ext, rels in sorted(self.ignored.items()):
            more = f" and {len(rels) - 3} more" if len(rels) > 3 else ""
            self.add(rels[0], f"ignored {len(rels)} {ext or 'extension-less'} file(s), not images or captions "
                              f"({', '.join(rels[:3])}{more})", "note")

    def scan_dir(self, d: Path, rel_dir: str, filenames: list[str], folder: str, repeats: int) -> None:
        images: dict[str, list[str]] = {}  # NFC stem -> image file names
        captions: dict[str, dict[str, str]] = {}  # NFC stem -> {ext: file name}
        masks: dict[str, list[str]] = {}  # NFC stem of the image -> its mask sidecars
        crops: dict[str, str] = {}  # NFC stem of the image -> its crop sidecar
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            low = name.lower()
            if low in SYSTEM_FILES:
                self.add(rel, "system file skipped", "note")
                continue
            if name.startswith("."):
                self.add(rel, "hidden file skipped (e.g. macOS '._' metadata)", "note")
                continue
            if not _valid_name(rel):
                self.add(rel, "file name is not valid UTF-8; rename it", "error")
                continue
            if not (d / name).is_file():
                if (d / name).is_symlink():
                    self.add(rel, "broken link skipped", "warning")
                continue
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            mask_of = mask_image_stem(name)
            crop_of = crop_image_stem(name)
            if crop_of is not None:
                crops[_nfc(crop_of)] = name
            elif mask_of is not None:
                masks.setdefault(_nfc(mask_of), []).append(name)
            elif ext in IMAGE_EXTENSIONS:
                images.setdefault(_nfc(stem), []).append(name)
            elif ext in self.caption_exts:
                captions.setdefault(_nfc(stem), {})[ext] = name
            elif ext in UNSUPPORTED_IMAGES:
                self.image_files += 1
                self.rejected += 1
                self.add(rel, f"not a readable image: {UNSUPPORTED_IMAGES[ext]}", "error")
            else:
                self.ignored.setdefault(ext, []).append(rel)
        used_captions: set[str] = set()
        for stem, names in images.items():
            if len(names) > 1:
                rels = [f"{rel_dir}/{n}" if rel_dir else n for n in names]
                self.add(rels[1], f"{' and '.join(names)} share the name {stem!r} (and so its caption); "
                                  f"all {len(names)} are used", "warning")
            mask_name = self.pick_mask(rel_dir, masks.get(stem, []))
            for name in names:
                cap_name = self.pick_caption(captions.get(stem, {}))
                if cap_name:
                    used_captions.add(cap_name)
                self.add_image(d, rel_dir, name, cap_name, mask_name, folder, repeats, crops.get(stem))
        for stem, exts in captions.items():
            for name in exts.values():
                if name not in used_captions and stem not in images:
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    self.add(rel, "caption without an image; ignored", "note")
        for stem, names in masks.items():
            if stem not in images:
                for name in names:
                    self.add(f"{rel_dir}/{name}" if rel_dir else name,
                             f"mask without an image (no {stem}.png, .jpg, … beside it); ignored", "note")
        for stem, name in crops.items():
            if stem not in images:
                self.add(f"{rel_dir}/{name}" if rel_dir else name,
                         f"crop file without an image (no {stem}.png, .jpg, … beside it); ignored", "note")

    def pick_caption(self, by_ext: dict[str, str]) -> str | None:
        for ext in self.caption_exts:
            if ext in by_ext:
                return by_ext[ext]
        return None

    def pick_mask(self, rel_dir: str, names: list[str]) -> str | None:
        """The image's mask sidecar among `names` (a PNG first); the others are reported, not used."""
        if not names:
            return None
        names = sorted(names, key=lambda n: (not n.lower().endswith(".png"), n))
        for other in names[1:]:
            self.add(f"{rel_dir}/{other}" if rel_dir else other, f"a second mask for the same image; {names[0]} is "
                                                                   f"used", "warning")
        return names[0]

    def add_image(self, d: Path, rel_dir: str, name: str, cap_name: str | None, mask_name: str | None, folder: str,
                  repeats: int, crop_name: str | None = None) -> None:
        rel = f"{rel_dir}/{name}" if rel_dir else name
        path = d / name
        self.image_files += 1
        notes: list[str] = []
        width = height = 0
        sha = ""
        alpha = False
        try:
            if self.open_images and self.check_images:
                sha, width, height, notes, alpha = decode_image(path, self.background, self.decoded)
            elif self.open_images:
                width, height = probe_size(path)
                sha = file_sha256(path)
        except ImageError as e:
            self.rejected += 1
            self.add(rel, e.reason, "error")
            return
        except OSError as e:
            self.rejected += 1
            self.add(rel, f"cannot read: {e.strerror or e}", "error")
            return
        for note in notes:
            self.add(rel, note, "warning" if note.startswith("tiny image") else "note")
        if self.open_images and not self.check_images and min(width, height) < TINY_SIDE:
            self.add(rel, f"tiny image ({width}×{height}, shortest side under {TINY_SIDE} px): it will be "
                          f"upscaled and blurry", "warning")
        caption, cap_rel = "", None
        if cap_name is None:
            self.add(rel, f"no caption file ({Path(name).stem}{self.caption_ext}); trained with an empty caption",
                     "warning")
        else:
            cap_rel = f"{rel_dir}/{cap_name}" if rel_dir else cap_name
            try:
                caption, cap_notes = read_caption(d / cap_name)
            except OSError as e:
                self.add(cap_rel, f"cannot read caption: {e.strerror or e}; trained with an empty caption", "warning")
            else:
                for note in cap_notes:
                    self.add(cap_rel, note, "note")
                if not caption:
                    self.add(cap_rel, "caption file is empty; trained with an empty caption", "warning")
        mask_rel, mask_sha = self.check_mask(d, rel_dir, rel, mask_name, (width, height))
        crop_rel, crop = self.check_crop(d, rel_dir, rel, crop_name)
        if sha and sha in self.seen_hash:
            self.add(rel, f"same picture as {self.seen_hash[sha]}; both are used, so it counts twice per epoch",
                     "warning")
        elif sha:
            self.seen_hash[sha] = rel
        self.items.append(Item(path=path, rel=rel, caption=caption, repeats=repeats, folder=folder,
                               is_reg=self.is_reg, sha256=sha, width=width, height=height, caption_file=cap_rel,
                               notes=notes, mask_file=mask_rel, mask_sha256=mask_sha, alpha_mask=alpha,
                               crop_file=crop_rel, crop_box=crop.box if crop else None,
                               focus=crop.focus if crop else None))

    def check_crop(self, d: Path, rel_dir: str, rel: str, crop_name: str | None):
        """(relative path, Crop) of the image's usable crop sidecar; (None, None) when it has none or it cannot
        be used (reported: the image then trains uncropped). Read in every mode: it is a few bytes."""
        if crop_name is None:
            return None, None
        crop_rel = f"{rel_dir}/{crop_name}" if rel_dir else crop_name
        try:
            return crop_rel, read_crop(d / crop_name)
        except CropError as e:
            self.add(crop_rel, f"{e.reason}; {rel} is trained uncropped", "warning")
        except OSError as e:
            self.add(crop_rel, f"cannot read crop file: {e.strerror or e}; {rel} is trained uncropped", "warning")
        return None, None

    def check_mask(self, d: Path, rel_dir: str, rel: str, mask_name: str | None,
                   size: tuple[int, int]) -> tuple[str | None, str]:
        """(relative path, sha256) of the image's usable mask sidecar; (None, "") when it has none or the mask
        cannot be used (reported: the image then trains without a mask)."""
        if mask_name is None:
            return None, ""
        mask_rel = f"{rel_dir}/{mask_name}" if rel_dir else mask_name
        if not self.open_images:
            return mask_rel, ""
        try:
            data = (d / mask_name).read_bytes()
        except OSError as e:
            self.add(mask_rel, f"cannot read mask: {e.strerror or e}; {rel} is trained without a mask", "warning")
            return None, ""
        reason = check_mask_file(d / mask_name, size, data) if self.check_images else None
        if reason:
            self.add(mask_rel, f"{reason}; {rel} is trained without a mask", "warning")
            return None, ""
        return mask_rel, hashlib.sha256(data).hexdigest()


def scan_dataset(root: str | Path, caption_ext: str = ".txt", default_repeats: int = 1, check_images: bool = True,
                 *, is_reg: bool = False, background: str = "#ffffff", decoded: dict | None = None) -> Scan:
    """Scan a dataset folder. check_images=True decodes every image (catches truncated files);
    False reads headers only. Raises DatasetError when the folder is missing or nothing in it is usable.
    decoded: a dict kept between scans of the same files (the studio's doctor): an image whose file is unchanged
    is not decoded again (see decode_image)."""
    root = Path(root).expanduser()
    kind = "regularisation folder" if is_reg else "dataset folder"
    if not str(root) or not root.exists():
        raise DatasetError(f"{kind} not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"{kind} is not a folder: {root}")
    if default_repeats < 1:
        raise ValueError("default_repeats must be at least 1")
    sc = _Scanner(root.resolve(), caption_ext, default_repeats, check_images, is_reg, background, decoded=decoded)
    sc.run()
    scan = Scan(root=sc.root, items=sc.items, problems=sc.problems, caption_ext=sc.caption_ext)
    if not scan.items:
        if sc.image_files:
            first = next((p for p in scan.problems if p.severity == "error"), None)
            detail = f" (first: {first.file}: {first.reason})" if first else ""
            raise DatasetError(f"no usable images in {kind} {root}: {sc.image_files} image file(s) found, "
                               f"{sc.rejected} rejected{detail}", scan.problems)
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"no images in {kind} {root} (looked for {exts})", scan.problems)
    return scan


def list_dataset(root: str | Path, caption_ext: str = ".txt", default_repeats: int = 1) -> Scan:
    """The images `scan_dataset` would consider, with captions, folders and repeats, without opening a single
    image (sizes are 0, hashes empty; a broken image is listed). A missing folder is an empty dataset."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return Scan(root=root, items=[], problems=[], caption_ext=caption_ext)
    sc = _Scanner(root.resolve(), caption_ext, max(1, default_repeats), False, False, "#ffffff", open_images=False)
    sc.run()
    return Scan(root=sc.root, items=sc.items, problems=sc.problems, caption_ext=sc.caption_ext)


def doctor(scan: Scan, resolution: int | None = None, max_aspect: float | None = None,
           masked_loss: bool | None = None) -> list[Problem]:
    """Everything the GUI's dataset doctor shows: the per-file problems plus dataset-level advice,
    errors first. masked_loss: whether the run trains with masks (None: not known, e.g. the Dataset tab)."""
    out = list(scan.problems)
    n = len(scan.items)
    out.extend(mask_findings(scan, masked_loss))
    out.extend(crop_findings(scan))
    if n < 5:
        out.append(Problem("", f"only {n} image(s); 10–50 varied images are typical for a character or style",
                           "warning"))
    uncaptioned = [it for it in scan.items if not it.caption]
    if uncaptioned and len(uncaptioned) * 2 >= n:
        out.append(Problem("", f"{len(uncaptioned)} of {n} images have no caption: the adapter cannot be called "
                               f"up by a trigger word", "warning"))
    counts = Counter(h for h in (it.sha256 for it in scan.items))
    dups = sum(c - 1 for c in counts.values() if c > 1)
    if dups:
        out.append(Problem("", f"{dups} duplicate picture(s): they weigh double in training", "warning"))
    tiny = [it.rel for it in scan.items if min(it.width, it.height) < TINY_SIDE]
    if tiny:
        out.append(Problem("", f"{len(tiny)} tiny image(s) under {TINY_SIDE} px: {', '.join(tiny[:3])}", "warning"))
    if resolution:
        small = [it.rel for it in scan.items if math.prod(trained_size(it)) < resolution * resolution
                 and min(it.width, it.height) >= TINY_SIDE]
        if small:
            out.append(Problem("", f"{len(small)} image(s) smaller than the training resolution {resolution} px are "
                                   f"upscaled (softer results): {', '.join(small[:3])}", "note"))
    if max_aspect:
        wide = [it.rel for it in scan.items
                if max(trained_size(it)) / max(1, min(trained_size(it))) > max_aspect * 1.01]
        if wide:
            out.append(Problem("", f"{len(wide)} image(s) wider than the {max_aspect:g}:1 aspect limit are cropped: "
                                   f"{', '.join(wide[:3])}", "note"))
    captioned = [it for it in scan.items if it.caption]
    if len(captioned) >= 3:
        tag_sets = [{t.lower() for t in split_tags(it.caption)} for it in captioned]
        common = set.intersection(*tag_sets)
        if common:
            out.append(Problem("", f"in every caption: {', '.join(sorted(common))} (a trigger word?)", "note"))
    return sorted(out, key=lambda p: (SEVERITY_ORDER[p.severity], p.file != "", p.file))


def mask_findings(scan: Scan, masked_loss: bool | None) -> list[Problem]:
    """What the doctor says about masks: how many images have one and from where; a warning when masked loss
    is on and no image has one (the option then changes nothing)."""
    counts = mask_counts(scan.items)
    n, masked = len(scan.items), counts["file"] + counts["alpha"]
    if masked_loss and not masked:
        return [Problem("", "masked loss is on but no image has a mask (add <name>_mask.png beside an image, white "
                            "= train, black = ignore, or use images with transparency): every pixel is trained",
                        "warning")]
    if not masked:
        return []
    where = ", ".join(f"{c} from {label}" for c, label in ((counts["file"], "_mask files"),
                                                             (counts["alpha"], "transparency")) if c)
    text = f"{masked} of {n} image(s) have a mask ({where})"
    if masked_loss:
        text += f"; {counts['none']} without one train on every pixel" if counts["none"] else ""
    elif masked_loss is False:
        text += "; masked loss is off, so they train on every pixel"
    return [Problem("", text, "note")]


def crop_findings(scan: Scan) -> list[Problem]:
    """What the doctor says about crop files: how many images train on a box and how many around a focus point."""
    counts = crop_counts(scan.items)
    if not counts["box"] and not counts["focus"]:
        return []
    parts = [f"{c} with {label}" for c, label in ((counts["box"], "a crop box"), (counts["focus"], "a focus point"))
             if c]
    return [Problem("", f"{' and '.join(parts)} of {len(scan.items)} image(s) (.crop.json files): the box is what is "
                        f"trained, the focus point stays in view", "note")]
