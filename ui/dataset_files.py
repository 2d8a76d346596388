"""Dataset files on the server: checked uploads, safe zip import, caption sidecars, the caption editor's
file operations (previews, exclude, delete, bulk edits with preview and undo), kohya `N_name` repeat folders
and the doctor's report. No Gradio here, so it is testable on its own.

What counts as an image, which caption belongs to it and how often it repeats is decided once, by the trainer's
scan (trainer/data/scan.py, torch-free): the studio lists a dataset with `list_dataset`, checks uploads with the
trainer's `load_image`, and decodes captions with the trainer's `decode_caption_bytes`, so the Dataset tab shows
what a run will train on."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import threading
import time
import unicodedata
import warnings
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from trainer.data.captions import decode_caption_bytes, read_caption as trainer_caption
from trainer.data.crops import crop_file_name, crop_image_stem
from trainer.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, ImageError, load_image, normalise
from trainer.data.masks import MASK_SUFFIX, is_mask_file, mask_image_stem
from trainer.data.scan import (CACHE_DIR_NAME, CAPTION_EXTENSIONS, REPEAT_FOLDER, DatasetError, Problem, Scan,
                               doctor, list_dataset, scan_dataset, settled)
from trainer.run.atomic import atomic_write_bytes, atomic_write_many, atomic_write_text

from ui.paths import UnsafePath, inside, safe_name

IMAGE_EXTS = IMAGE_EXTENSIONS
CAPTION_EXTS = frozenset(CAPTION_EXTENSIONS)
UPLOAD_TYPES = sorted(IMAGE_EXTS | CAPTION_EXTS | {".zip"})
CAPTION_ORDER = tuple(dict.fromkeys((".txt", *CAPTION_EXTENSIONS)))  # the trainer's order for caption_ext .txt
LOOSE_FOLDER = "images"
EXCLUDED_DIR = ".excluded"  # hidden: the trainer's scan skips it, so excluded images are kept but not trained
PREVIEW_DIR = "previews"  # inside the dataset's .atelier-cache, which the scan skips silently
THUMB_SIDE, LARGE_SIDE = 256, 1024
MAX_NAME_BYTES = 150  # leaves room for "-12", a temp-file prefix and a long data-folder path
_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 50 * 2**20
    max_pixels: int = 64 * 2**20
    max_caption_bytes: int = 64 * 2**10
    max_zip_entries: int = 5000
    max_zip_total_bytes: int = 2 * 2**30
    max_zip_ratio: float = 200.0  # a larger uncompressed/compressed ratio is a zip bomb, not photos


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # "name: reason"
    changed: list[str] = field(default_factory=list)  # renames and conversions, "name: what was done"

    def merge(self, other: "ImportReport") -> None:
        self.added += other.added
        self.rejected += other.rejected
        self.changed += other.changed

    def summary(self) -> str:
        """Markdown: a blank line before each list, or it runs into the line above."""
        parts = [f"Added {len(self.added)} file(s)."]
        if self.rejected:
            parts.append(f"Refused {len(self.rejected)}:\n\n" + _bullets(self.rejected))
        if self.changed:
            parts.append(f"Changed on the way in ({len(self.changed)}):\n\n" + _bullets(self.changed))
        return "\n\n".join(parts)


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {x}" for x in items)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def safe_file_name(name: str, fallback: str = "image") -> tuple[str, str | None]:
    """(file name to store, why it differs from `name` or None). Unicode names are kept; only what a file
    system refuses, what hides the file from the trainer (a leading '.') or what Windows cannot hold goes."""
    name = _nfc(name)
    stem, ext = os.path.splitext(name)
    ext = _FORBIDDEN.sub("", ext)
    reasons = []
    clean = _FORBIDDEN.sub("", stem)
    if clean != stem:
        reasons.append("characters file systems refuse were removed")
    if clean.strip().startswith("."):
        reasons.append("a name starting with '.' is hidden, and hidden files are not trained")
    clean = clean.strip(" .")  # Windows also drops trailing dots and spaces
    if clean.partition(".")[0].upper() in _WINDOWS_RESERVED:
        clean = "_" + clean
        reasons.append("Windows reserves that name")
    if len(clean.encode()) > MAX_NAME_BYTES:
        clean = clean.encode()[:MAX_NAME_BYTES].decode("utf-8", "ignore").rstrip(" .")
        reasons.append(f"name longer than {MAX_NAME_BYTES} bytes")
    if not clean:
        clean = fallback
    out = clean + ext
    if out != name and not reasons:
        reasons.append("spaces or dots at the ends of the name were removed")
    return out, ("; ".join(reasons) if out != name else None)


def _unique(dest: Path, taken: frozenset[str] = frozenset()) -> Path:
    """`dest`, or `name-1.ext`, `name-2.ext`... when a file has that name, or `taken` (case-folded paths of files
    about to be written) does: on a case-insensitive disk A.png and a.png would be one file."""
    if not dest.exists() and str(dest).casefold() not in taken:
        return dest
    for i in range(1, 100_000):
        cand = dest.with_name(f"{dest.stem}-{i}{dest.suffix}")
        if not cand.exists() and str(cand).casefold() not in taken:
            return cand
    raise FileExistsError(dest)


def check_image(data: bytes, name: str, limits: Limits) -> str | None:
    """None if `data` is an image the trainer can use, else the reason in words. The trainer's own loader
    decodes it completely, so a truncated or corrupt file is refused here rather than skipped by a run."""
    if len(data) > limits.max_file_bytes:
        return f"larger than {limits.max_file_bytes // 2**20} MB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # header only: refuse huge images before decoding
                w, h = im.size
    except Exception:  # load_image below says in words what is wrong
        w = h = 0
    if w * h > limits.max_pixels:
        return f"{w}×{h} is more than {limits.max_pixels} pixels"
    try:
        load_image(Path(name), data=data).image.close()
    except ImageError as e:
        return e.reason
    return None


def _caption_text(data: bytes, limits: Limits) -> tuple[str | None, str | None, str | None]:
    """(text, conversion note, refusal reason) for an uploaded caption file."""
    if len(data) > limits.max_caption_bytes:
        return None, None, f"caption file larger than {limits.max_caption_bytes // 2**10} KB"
    text, note = decode_caption_bytes(data)
    text = text.replace("\x00", "")
    return text, (f"converted to UTF-8 ({note})" if note else None), None


class _Importer:
    """Stores checked files into a dataset; images first, so a mask or caption follows its image when it is renamed.
    Files are written in batches (`flush`), whose fsyncs overlap: one at a time, they were half of a
    500-image upload's time."""

    FLUSH_FILES, FLUSH_BYTES = 64, 64 * 2**20  # a batch holds at most this much in memory

    def __init__(self, root: Path, limits: Limits):
        self.root, self.limits = root, limits
        self.renamed: dict[tuple[str, str], str] = {}  # (folder, uploaded stem) -> stored stem
        self.rep = ImportReport()
        self.pending: dict[Path, bytes] = {}  # checked files not written yet; a later caption replaces one

    def flush(self) -> None:
        files, self.pending = list(self.pending.items()), {}
        atomic_write_many(files)

    def _mask_dest(self, target: Path, folder: str, name: str, stored: str, of: str,
                   why: str | None) -> tuple[Path, str | None]:
        """Where an uploaded `<stem>_mask.png` goes: beside its image's stored name (a mask is paired by name, so
        it follows a renamed image), replacing that image's old mask as a caption replaces its caption. Never
        `<stem>_mask-1.png`: that name is no mask, the trainer would train on it as an image."""
        image_stem = self.renamed.get((folder, _nfc(of)))
        if image_stem is None:
            return target / stored, why
        suffix = Path(name).stem[len(of):]  # `_mask` as it was spelled
        dest = target / f"{image_stem}{suffix}{Path(stored).suffix}"
        return dest, (None if dest.name == name else f"follows its image, stored as {image_stem}")

    def add(self, data: bytes, name: str, folder: str, label: str) -> None:
        """label: how the report names this file (the upload's name, or zip:entry)."""
        ext = Path(name).suffix.lower()
        if ext not in IMAGE_EXTS and ext not in CAPTION_EXTS:
            self.rep.rejected.append(f"{label}: not an image or caption (allowed: {', '.join(UPLOAD_TYPES)})")
            return
        target = inside(self.root, folder)
        stored, why = safe_file_name(name)
        if ext in IMAGE_EXTS:
            reason = check_image(data, label, self.limits)
            if reason:
                self.rep.rejected.append(f"{label}: {reason}")
                return
            of = mask_image_stem(name)
            if of is not None:
                dest, why = self._mask_dest(target, folder, name, stored, of, why)
            else:
                dest = _unique(target / stored, frozenset(str(p).casefold() for p in self.pending))
                if dest.name != stored:
                    why = "; ".join(x for x in (why, f"a file named {stored} is already in {folder}") if x)
                self.renamed[(folder, _nfc(Path(name).stem))] = dest.stem
        else:
            text, note, reason = _caption_text(data, self.limits)
            if reason:
                self.rep.rejected.append(f"{label}: {reason}")
                return
            image_stem = self.renamed.get((folder, _nfc(Path(name).stem)))
            if image_stem is not None:  # uploaded with its image: it follows the image's stored name
                why = None if image_stem == Path(name).stem else f"follows its image, stored as {image_stem}"
            stem = image_stem if image_stem is not None else Path(stored).stem
            if ext != ".txt":
                why = "; ".join(x for x in (why, "the studio keeps captions in .txt files") if x)
            dest = target / f"{stem}.txt"  # replaces the caption of that image
            if note:
                self.rep.changed.append(f"{label}: {note}")
            data = text.encode("utf-8")
        self.pending[dest] = data
        if len(self.pending) >= self.FLUSH_FILES or sum(map(len, self.pending.values())) >= self.FLUSH_BYTES:
            self.flush()
        if why:
            self.rep.changed.append(f"{label}: renamed to {dest.name} ({why})")
        self.rep.added.append(f"{folder}/{dest.name}")


def _is_caption(name: str) -> bool:
    return Path(name).suffix.lower() in CAPTION_EXTS


def _import_order(name: str) -> int:
    """Images first, then masks, then captions: a mask or caption follows the name its image was stored under."""
    return 2 if _is_caption(name) else 1 if is_mask_file(name) else 0


def _zip_problem(info: zipfile.ZipInfo, limits: Limits) -> str | None:
    name = info.filename
    parts = re.split(r"[\\/]+", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "path with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    if info.file_size > limits.max_file_bytes:
        return f"entry larger than {limits.max_file_bytes // 2**20} MB"
    if info.file_size > 1024 and info.file_size / max(info.compress_size, 1) > limits.max_zip_ratio:
        return f"compression ratio {info.file_size / max(info.compress_size, 1):.0f}:1 (zip bomb)"
    return None


def _import_zip(zip_path: Path, imp: _Importer) -> None:
    """Check every entry before extracting anything; one bad entry refuses the whole archive."""
    rep, limits = imp.rep, imp.limits
    label = Path(zip_path).name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        rep.rejected.append(f"{label}: not a readable zip ({e})")
        return
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_entries:
            rep.rejected.append(f"{label}: {len(infos)} entries, more than {limits.max_zip_entries}")
            return
        total = sum(i.file_size for i in infos)
        if total > limits.max_zip_total_bytes:
            rep.rejected.append(f"{label}: unpacks to {total / 2**20:.0f} MB, more than "
                                f"{limits.max_zip_total_bytes // 2**20} MB")
            return
        for info in infos:
            problem = _zip_problem(info, limits)
            if problem:
                rep.rejected.append(f"{label}: refused, entry {info.filename!r}: {problem}")
                return
        entries = []
        for info in infos:
            parts = [p for p in re.split(r"[\\/]+", info.filename) if p]
            if info.is_dir() or not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            entries.append((info, parts))
        renamed_folders = set()
        for info, parts in sorted(entries, key=lambda e: _import_order(e[1][-1])):
            # keep one folder level: kohya `10_name` folders carry repeats
            folder = safe_name(parts[-2], LOOSE_FOLDER, 64) if len(parts) > 1 else LOOSE_FOLDER
            if len(parts) > 1 and folder != parts[-2] and parts[-2] not in renamed_folders:
                renamed_folders.add(parts[-2])
                rep.changed.append(f"{label}: folder {parts[-2]} stored as {folder} (letters, digits, - and _ only)")
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)  # never trust the header's size
            if len(data) > info.file_size:
                rep.rejected.append(f"{label}:{info.filename}: size does not match its header")
                continue
            imp.add(data, parts[-1], folder, f"{label}:{info.filename}")


def import_uploads(paths: list[str | Path], dest_root: Path, limits: Limits = Limits(),
                   folder: str = LOOSE_FOLDER) -> ImportReport:
    """Add uploaded files (images, captions, zips) to a dataset folder, checking each on the server."""
    imp = _Importer(dest_root, limits)
    try:
        _import_files(paths, imp, safe_name(folder, LOOSE_FOLDER, 64))
    finally:
        imp.flush()
    return imp.rep


def _import_files(paths: list[str | Path], imp: _Importer, folder: str) -> None:
    rep, limits = imp.rep, imp.limits
    for p in sorted((Path(p) for p in paths), key=lambda p: _import_order(p.name)):
        name = p.name
        try:
            size = p.stat().st_size
        except OSError as e:
            rep.rejected.append(f"{name}: cannot read ({e.strerror})")
            continue
        if p.suffix.lower() == ".zip":
            if size > limits.max_zip_total_bytes:
                rep.rejected.append(f"{name}: larger than {limits.max_zip_total_bytes // 2**20} MB")
                continue
            _import_zip(p, imp)
            continue
        if size > limits.max_file_bytes:
            rep.rejected.append(f"{name}: larger than {limits.max_file_bytes // 2**20} MB")
            continue
        imp.add(p.read_bytes(), name, folder, name)


def discard_uploads(paths: list[str | Path], cache_root: Path) -> int:
    """Delete uploaded files (already copied into a dataset or refused) from Gradio's upload cache, and their
    emptied folders. Only paths inside `cache_root` are touched: a user's own files never are."""
    real_root, n, upload_dirs = Path(cache_root).resolve(), 0, set()
    for p in paths:
        p = Path(p)
        try:
            real = p.resolve()
        except OSError:
            continue
        if not real.is_relative_to(real_root) or real == real_root or not real.is_file():
            continue
        real.unlink(missing_ok=True)
        n += 1
        if real.parent.parent.is_relative_to(real_root) and real.parent.parent != real_root:
            upload_dirs.add(real.parent.parent)  # Gradio keeps an upload as <uploads>/<sha256>/<name>
        parent = real.parent
        while parent != real_root and parent.is_relative_to(real_root):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
    # gr.File leaves one empty `tmpXXXXXXXX` file there per uploaded file and never reads it again; an upload
    # being received has the same kind of name, so only placeholders an hour old go
    old = time.time() - 3600
    for d in upload_dirs:
        for f in d.glob("tmp*"):
            try:
                st = f.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_mtime < old:
                    f.unlink()
            except OSError:
                pass
    return n


def _own_file(p: Path, real_root: Path) -> bool:
    """A regular file that really lies in the dataset: a symlink planted there could point anywhere."""
    return p.is_file() and not p.is_symlink() and p.resolve().is_relative_to(real_root)


# ---- the listing, remembered -------------------------------------------------------------------------------
# Listing 500 images (every caption read, every file checked to lie in the dataset) took 0.1-0.4 s, and Next,
# Previous, a caption save and the tag table each listed the dataset again (issue #14). The listing is kept
# per dataset with the identity (inode, size, mtime) of every file it was made from: comparing that with the
# files now (one stat each, ~10 ms at 500 images) tells whether anything changed since, by the studio or by
# anyone else, and only then is the dataset listed again. The studio's own caption saves patch it in place.
# A listing is kept only when every file in it is `settled` (trainer.data.scan: git's racy-clean rule).
_VIEWS: dict[str, tuple[dict[str, tuple[int, int, int] | None], Scan]] = {}  # real root -> (file_stats, listing)
_VIEWS_LOCK = threading.Lock()
_MAX_VIEWS = 16


def file_stats(root: Path) -> dict[str, tuple[int, int, int] | None]:
    """{path under `root`: (inode, size, mtime ns)} of every file (its .atelier-cache aside; a dangling link:
    None). Any file added, removed, renamed or written changes it; a caption written through a temporary file
    and a rename changes its inode even within one mtime tick."""
    out: dict[str, tuple[int, int, int] | None] = {}

    def walk(folder: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name != CACHE_DIR_NAME:
                    walk(e.path, f"{prefix}{e.name}/")
                continue
            try:
                st = e.stat()
                out[prefix + e.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                out[prefix + e.name] = None

    walk(str(root), "")
    return out


def _listing(root: Path) -> Scan:
    """The trainer's listing of `root`, without files the page must not serve. A listed file is the dataset's
    own when it is a regular file (not a link) in a folder that resolves inside the dataset: each folder is
    resolved once (resolving each of 500 files was most of the listing's time)."""
    scan = list_dataset(root)
    real_root, inside_dirs = Path(root).resolve(), {}
    own = []
    for it in scan.items:
        p = Path(root) / it.rel
        if p.parent not in inside_dirs:
            inside_dirs[p.parent] = p.parent.resolve().is_relative_to(real_root)
        try:
            regular = stat.S_ISREG(p.lstat().st_mode)
        except OSError:
            regular = False
        if regular and inside_dirs[p.parent]:
            own.append(it)
    scan.items = own
    scan.problems = []  # what is wrong is the doctor's to say (a full scan): the listing holds the images
    return scan


def dataset_view(root: Path) -> Scan:
    """The trainer's listing of `root` (no pixels decoded): its images with their captions, folders and repeats,
    without files the page must not serve. Not its problems (empty here): the doctor reports those. Listed
    again only when a file of the dataset changed since the last time (see _VIEWS); a fresh Scan each call."""
    key, since, stats = str(Path(root).resolve()), time.time_ns(), file_stats(root)
    with _VIEWS_LOCK:
        hit = _VIEWS.get(key)
    if hit is None or hit[0] != stats:
        hit = (stats, _listing(root))
        keep = all(st is None or settled(st[2], since) for st in stats.values())
        with _VIEWS_LOCK:
            _VIEWS.pop(key, None)
            if keep:
                if len(_VIEWS) >= _MAX_VIEWS:
                    _VIEWS.pop(next(iter(_VIEWS)))
                _VIEWS[key] = hit
    scan = hit[1]
    return replace(scan, items=list(scan.items), problems=[])


def list_images(root: Path) -> list[Path]:
    """The images a run on `root` trains on, as paths under `root`."""
    return [Path(root) / it.rel for it in dataset_view(root).items]


def caption_path(image: Path) -> Path:
    return image.with_suffix(".txt")


def caption_file(image: Path) -> Path | None:
    """The sidecar the trainer reads for `image`: same name (NFC), extension in the trainer's order."""
    stem, found = _nfc(image.stem), {}
    real_dir = image.parent.resolve()
    try:
        names = os.listdir(image.parent)  # names, not Paths: a folder of 500 images made this 0.1 s a caption
    except OSError:
        return None
    for name in names:
        base, ext = os.path.splitext(name)
        ext = ext.lower()
        if ext in CAPTION_EXTS and _nfc(base) == stem and _own_file(image.parent / name, real_dir):
            found.setdefault(ext, image.parent / name)
    return next((found[e] for e in CAPTION_ORDER if e in found), None)


def read_caption(image: Path) -> str:
    """The caption file's text for the editor, decoded as the trainer decodes it. Its lines are kept here;
    the trainer joins them with spaces (what `dataset_view` shows)."""
    side = caption_file(image)
    if side is None:
        return ""
    text, _note = decode_caption_bytes(side.read_bytes())
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _caption_bytes(text: str) -> bytes:
    return (text.strip() + "\n").encode("utf-8")


def write_caption(image: Path, text: str) -> None:
    """Write the image's .txt caption. A remembered listing of its dataset that was up to date before the write
    gets the new caption (for every image it belongs to) instead of being listed again; one that was not, or
    files that changed meanwhile, and it is dropped. (The file just written is recent, but written by us: only
    a same-size rewrite of it by someone else within one timestamp tick would go unseen.)"""
    side = caption_path(image)
    real_side = side.parent.resolve() / side.name
    with _VIEWS_LOCK:
        held = next(((k, v) for k, v in _VIEWS.items() if real_side.is_relative_to(k)), None)
        fresh = held is not None and file_stats(Path(held[0])) == held[1][0]
        atomic_write_bytes(side, _caption_bytes(text))
        if held is None:
            return
        patched = _with_caption(Path(held[0]), held[1], real_side) if fresh else None
        if patched:
            _VIEWS[held[0]] = patched
        else:
            _VIEWS.pop(held[0])


def _with_caption(root: Path, held: tuple[dict, Scan], side: Path) -> tuple[dict, Scan] | None:
    """`held` (file stats, listing) after `side` was written, or None when other files changed as well. The
    scan pairs a caption with every image of its folder whose name without extension is the same (NFC), and
    the configured extension (.txt) comes first: so it is the caption of exactly those."""
    stats, scan = held
    cap_rel = side.relative_to(root).as_posix()
    expected = dict(stats)
    st = side.stat()
    expected[cap_rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
    if file_stats(root) != expected:
        return None
    caption = trainer_caption(side)[0]
    stem = _nfc(side.stem)
    items = [replace(it, caption=caption, caption_file=cap_rel)
             if it.path.parent == side.parent and _nfc(it.path.stem) == stem else it for it in scan.items]
    return expected, replace(scan, items=items, problems=[])


def _tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def _edit(old: str, op: str, a: str, b: str) -> str:
    if op == "trigger":
        tags = _tags(old)
        return old if a.strip() in tags else ", ".join([a.strip(), *tags])
    if op == "prefix":
        return f"{a}{old}"
    if op == "suffix":
        return f"{old}{a}"
    if op == "replace":
        if not a:
            raise ValueError("find/replace: the text to find is empty")
        return old.replace(a, b)
    raise ValueError(f"unknown caption tool {op!r}")


def plan_bulk_edit(root: Path, op: str, a: str = "", b: str = "") -> list[tuple[str, str, str]]:
    """(image, caption now, caption after) for every caption the tool would change; nothing is written.
    op: trigger (put tag `a` first unless present), prefix, suffix, replace (a → b)."""
    if op == "trigger" and not a.strip():
        raise ValueError("trigger word: type the word to put first")
    plan = []
    for it in dataset_view(root).items:
        new = _edit(it.caption, op, a, b)
        if new != it.caption:
            plan.append((it.rel, it.caption, new))
    return plan


@dataclass
class CaptionUndo:
    """What a bulk edit replaced: the .txt bytes before (None: there was none) and the text it wrote."""
    before: dict[str, bytes | None] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)


def apply_caption_changes(root: Path, plan: list[tuple[str, str, str]]) -> CaptionUndo:
    """Write a bulk edit's captions (all at once: see atomic_write_many); what they replaced goes in the undo."""
    undo, real_root, writes = CaptionUndo(), Path(root).resolve(), {}
    for rel, _old, new in plan:
        side = caption_path(inside(root, rel))
        undo.before[rel] = side.read_bytes() if _own_file(side, real_root) else None
        writes[rel] = (side, _caption_bytes(new))
    atomic_write_many(writes.values())
    for rel, (side, _) in writes.items():
        undo.written[rel] = side.read_text(encoding="utf-8")
    return undo


def undo_caption_changes(root: Path, undo: CaptionUndo) -> tuple[int, list[str]]:
    """Put back what a bulk edit replaced; a caption edited since is left alone. (restored, left alone)."""
    restored, kept, writes = 0, [], []
    for rel, before in undo.before.items():
        side = caption_path(inside(root, rel))
        now = side.read_text(encoding="utf-8", errors="replace") if side.is_file() else None
        if now != undo.written.get(rel):
            kept.append(rel)
            continue
        if before is None:
            side.unlink()
        else:
            writes.append((side, before))
        restored += 1
    atomic_write_many(writes)
    return restored, kept


def bulk_edit(root: Path, op: str, a: str = "", b: str = "") -> int:
    """Apply a caption tool to every image in the dataset; returns how many captions changed."""
    plan = plan_bulk_edit(root, op, a, b)
    apply_caption_changes(root, plan)
    return len(plan)


def tag_frequency(root: Path, view: Scan | None = None) -> list[tuple[str, int]]:
    """(tag, images whose caption has it), most frequent first: the trainer's count (ss_tag_frequency),
    summed over folders. view: `dataset_view(root)` when the caller has it already."""
    total: Counter = Counter()
    for counts in (view or dataset_view(root)).tag_frequency.values():
        total.update(counts)
    return total.most_common()


def folders(root: Path) -> list[tuple[str, int | None, int]]:
    """(folder, repeats from the `N_name` prefix or None, images the trainer uses) for each top-level folder;
    "." for images lying in the dataset folder itself."""
    if not Path(root).is_dir():
        return []
    counts = Counter(it.rel.split("/", 1)[0] if "/" in it.rel else "." for it in dataset_view(root).items)
    out = []
    for d in sorted(p.name for p in Path(root).iterdir()
                    if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        m = REPEAT_FOLDER.fullmatch(d)
        out.append((d, int(m.group(1)) if m else None, counts.get(d, 0)))
    if counts.get("."):
        out.insert(0, (".", None, counts["."]))
    return out


def set_repeats(root: Path, folder: str, repeats: int) -> str:
    """Rename a folder to kohya's `N_name` so its images repeat N times per epoch."""
    src = inside(root, folder)
    if src.parent != Path(root).resolve() or not src.is_dir():
        raise ValueError(f"{folder}: not a folder of this dataset")
    if not 1 <= int(repeats) <= 1000:
        raise ValueError("repeats must be between 1 and 1000")
    m = REPEAT_FOLDER.fullmatch(src.name)
    concept = m.group(2) if m else src.name
    dest = src.with_name(f"{int(repeats)}_{concept}")
    if dest != src:
        if dest.exists():
            raise FileExistsError(f"{dest.name}: a folder of that name exists")
        src.rename(dest)
    return dest.name


def dataset_image(root: Path, rel: str) -> Path:
    """`rel` as a path inside the dataset, refused unless it is one of the images the dataset lists."""
    if not rel or not isinstance(rel, str):
        raise ValueError("no image picked")
    img = inside(root, rel)
    if rel not in {it.rel for it in dataset_view(root).items}:
        raise ValueError(f"{rel}: not an image of this dataset")
    return img


def _sidecars(img: Path) -> list[Path]:
    """The image's caption files, its `<stem>_mask.png` (trainer.data.masks) and its `<stem>.crop.json`
    (trainer.data.crops): they go where the image goes."""
    real_dir, stem = img.parent.resolve(), _nfc(img.stem)

    def belongs(p: Path) -> bool:
        if p.suffix.lower() in CAPTION_EXTS:
            return _nfc(p.stem) == stem
        of = mask_image_stem(p.name) or crop_image_stem(p.name)
        return of is not None and _nfc(of) == stem

    return [p for p in img.parent.iterdir() if p != img and belongs(p) and _own_file(p, real_dir)]


def _move_with_sidecars(img: Path, dest: Path) -> None:
    """Rename `img` to `dest`, its captions and mask along (to dest's stem: `_unique` may have renamed it)."""
    for side in _sidecars(img):
        if is_mask_file(side.name):
            side.rename(dest.with_name(f"{dest.stem}{side.stem[-len(MASK_SUFFIX):]}{side.suffix}"))
        elif crop_image_stem(side.name):  # `<stem>.crop.json` keeps both of its suffixes
            side.rename(dest.with_name(crop_file_name(dest.name)))
        else:
            side.rename(dest.with_suffix(side.suffix))
    img.rename(dest)


def exclude_image(root: Path, rel: str) -> str:
    """Move an image, its caption and mask into the dataset's hidden `.excluded/` folder: kept, but not trained.
    Returns where it went, relative to `.excluded/`."""
    img = dataset_image(root, rel)
    dest = _unique(inside(root, EXCLUDED_DIR, rel))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _move_with_sidecars(img, dest)
    return str(dest.relative_to(inside(root, EXCLUDED_DIR)))


def excluded_images(root: Path) -> list[str]:
    base = Path(root) / EXCLUDED_DIR
    if not base.is_dir():
        return []
    real = base.resolve()
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and not is_mask_file(p.name) and _own_file(p, real))


def restore_image(root: Path, rel: str) -> str:
    """Move an excluded image (and its caption and mask) back to where it was; returns its dataset path."""
    src = inside(root, EXCLUDED_DIR, rel)
    if rel not in excluded_images(root):
        raise ValueError(f"{rel}: not an excluded image of this dataset")
    dest = _unique(inside(root, rel))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _move_with_sidecars(src, dest)
    return str(dest.relative_to(Path(root).resolve()))


def delete_image(root: Path, rel: str) -> list[str]:
    """Delete an image, its caption files and mask for good; returns the deleted files' names."""
    img = dataset_image(root, rel)
    gone = [*_sidecars(img), img]
    for p in gone:
        p.unlink()
    return [p.name for p in gone]


def copy_dataset(src: Path, dest: Path) -> int:
    """Snapshot the dataset into the run folder (images + captions + masks), so later edits don't change a run."""
    n = 0
    real_root = Path(src).resolve()
    for it in dataset_view(src).items:
        img, rel = Path(src) / it.rel, Path(it.rel)
        (dest / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy2(img, dest / rel)
        side = caption_file(img)
        if side is not None:
            shutil.copy2(side, dest / rel.parent / side.name)
        if it.mask_file and _own_file(Path(src) / it.mask_file, real_root):  # the trainer's masked loss reads it
            shutil.copy2(Path(src) / it.mask_file, dest / it.mask_file)
        if it.crop_file and _own_file(Path(src) / it.crop_file, real_root):  # the crop box / focus point
            shutil.copy2(Path(src) / it.crop_file, dest / it.crop_file)
        n += 1
    return n


def _preview_dir(root: Path, side: int) -> Path:
    return Path(root) / CACHE_DIR_NAME / PREVIEW_DIR / str(side)


def _preview_key(img: Path, rel: str) -> str:
    st = img.stat()
    return hashlib.sha1(f"{rel}\0{st.st_mtime_ns}\0{st.st_size}".encode()).hexdigest()[:20]


def _broken_picture(side: int) -> Image.Image:
    im = Image.new("RGB", (side, side), (235, 235, 235))
    d = ImageDraw.Draw(im)
    w = max(2, side // 24)
    d.line((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=(200, 40, 40), width=w)
    d.line((3 * side // 4, side // 4, side // 4, 3 * side // 4), fill=(200, 40, 40), width=w)
    return im


def _quick_picture(img: Path, side: int) -> Image.Image | None:
    """What load_image makes of `img` (upright, alpha on white, 8-bit RGB) at most `side` px, with JPEGs decoded
    at a reduced scale (several times faster on photos); None when anything is off (load_image then decides)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(img) as im:
                if im.width * im.height > MAX_PIXELS:
                    return None
                im.draft("RGB", (side, side))  # only JPEG honours it: whole data read, 1/2–1/8 scale decoded
                im.load()
                rgb = normalise(ImageOps.exif_transpose(im))
                rgb = rgb.copy() if rgb is im else rgb
        rgb.thumbnail((side, side))
        return rgb
    except Exception:  # truncated, corrupt, odd modes: the trainer's loader gives the reason
        return None


def preview(root: Path, rel: str, side: int = THUMB_SIDE) -> tuple[Path, str | None]:
    """(a JPEG of the image as the trainer sees it, upright RGB at most `side` px, cached in the dataset's
    .atelier-cache; the reason the trainer will skip it, or None). Browsers cannot show .tif, .tga or .ppm:
    the page shows these previews, never the files themselves."""
    img = inside(root, rel)
    out = _preview_dir(root, side) / f"{_preview_key(img, rel)}.jpg"
    reason_file = out.with_suffix(".skip")
    if out.is_file():
        return out, (reason_file.read_text(encoding="utf-8") if reason_file.is_file() else None)
    reason = None
    im = _quick_picture(img, side)
    if im is None:
        try:
            im = load_image(img).image  # the trainer's loader, for its reason when it cannot read the file
            im.thumbnail((side, side))
        except ImageError as e:
            reason = e.reason
            im = _broken_picture(side)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
    if reason:
        atomic_write_text(reason_file, reason)
    atomic_write_bytes(out, buf.getvalue())
    return out, reason


def previews(root: Path, rels: list[str], side: int = THUMB_SIDE) -> list[tuple[Path, str | None]]:
    """`preview` of each of `rels`, in order, made in threads: decoding, resizing and the cache file's fsync
    overlap (a gallery of 300 new thumbnails waited on them one at a time)."""
    if len(rels) < 2:
        return [preview(root, rel, side) for rel in rels]
    with ThreadPoolExecutor(max_workers=min(4, len(rels))) as pool:
        return list(pool.map(lambda rel: preview(root, rel, side), rels))


def prune_previews(root: Path, rels: list[str]) -> None:
    """Drop cached previews of images that are gone or changed."""
    keep = set()
    for rel in rels:
        try:
            keep.add(_preview_key(inside(root, rel), rel))
        except (OSError, UnsafePath):
            pass
    for side in (THUMB_SIDE, LARGE_SIDE):
        d = _preview_dir(root, side)
        if d.is_dir():
            for p in d.iterdir():
                if p.stem not in keep:
                    p.unlink(missing_ok=True)


def doctor_report(root: Path, caption_ext: str = ".txt", default_repeats: int = 1,
                  masked_loss: bool | None = None) -> str:
    """The dataset doctor's findings as Markdown: the trainer's full scan (every image decoded). masked_loss:
    the run's setting when known (the doctor then counts images without a mask, or warns that none has one)."""
    excluded = len(excluded_images(root))
    try:
        scan = scan_dataset(root, caption_ext, default_repeats, decoded=_DECODED)
        findings, n = doctor(scan, masked_loss=masked_loss), len(scan.items)
    except DatasetError as e:  # nothing usable: the per-file reasons still say why
        findings, n = list(e.problems), 0
        if not Path(root).is_dir() or not findings and not excluded:
            return "Dataset doctor: 0 image(s) yet. Upload images (or a zip) above."
    except Exception as e:  # the doctor must never take the page down
        return f"Dataset doctor could not read the dataset: {e}"
    findings = [f for f in findings if f.file.rstrip("/") != EXCLUDED_DIR and not f.file.startswith(EXCLUDED_DIR + "/")]
    skipped = sum(1 for f in findings if _skipped(f))
    head = f"Dataset doctor: {n} image(s) will be trained"
    if skipped:
        head += f", {skipped} file(s) will be skipped"
    if excluded:
        head += f", {excluded} excluded (kept in {EXCLUDED_DIR}/; restore them under “Excluded images”)"
    if not findings:
        return head + ". No problems found."
    lines = [f"{head}. {len(findings)} finding(s):"]
    for f in findings[:50]:
        where = f"`{f.file}`: " if f.file else ""
        lines.append(f"- **{f.severity}** {where}{f.reason}{'; skipped, not trained' if _skipped(f) else ''}")
    if len(findings) > 50:
        lines.append(f"- … and {len(findings) - 50} more")
    return "\n".join(lines)


_DOCTOR_CACHE: dict[str, tuple[str, str]] = {}  # real root -> (fingerprint, report); decoding is the slow part
# what the doctor's scans decoded, by file identity (trainer.data.scan.decode_image): after a caption edit
# the doctor re-scans the dataset without decoding its pictures again (11 s at 500 images before)
_DECODED: dict = {}
_MAX_DECODED = 50_000


def fingerprint(root: Path) -> str:
    """Changes whenever a file of the dataset (or an excluded one) is added, removed, renamed or written."""
    h = hashlib.sha1()
    for rel, st in sorted(file_stats(root).items()):
        h.update(f"{rel}\0{st}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def cached_doctor_report(root: Path, only_cached: bool = False) -> str | None:
    """doctor_report, redone only when the dataset's files changed; None with only_cached and nothing cached."""
    key, fp = str(Path(root).resolve()), fingerprint(root)
    hit = _DOCTOR_CACHE.get(key)
    if hit and hit[0] == fp:
        return hit[1]
    if only_cached:
        return None
    if len(_DECODED) > _MAX_DECODED:
        _DECODED.clear()
    report = doctor_report(root)
    if len(_DOCTOR_CACHE) > 32:
        _DOCTOR_CACHE.pop(next(iter(_DOCTOR_CACHE)))
    _DOCTOR_CACHE[key] = (fp, report)
    return report


def _skipped(f: Problem) -> bool:
    """An error about one file is a file the trainer leaves out."""
    return f.severity == "error" and bool(f.file) and not f.file.endswith("/")
