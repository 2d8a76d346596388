"""Dataset files on the server: checked uploads, safe zip import, caption sidecars, bulk caption tools and
kohya `N_name` repeat folders. No Gradio here, so it is testable on its own."""
from __future__ import annotations

import re
import shutil
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from trainer.run.atomic import atomic_write_bytes, atomic_write_text

from ui.paths import inside, safe_name

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "MPO"}
CAPTION_EXTS = {".txt", ".caption"}
LOOSE_FOLDER = "images"
_REPEAT_FOLDER = re.compile(r"(\d+)_(.+)")


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

    def merge(self, other: "ImportReport") -> None:
        self.added += other.added
        self.rejected += other.rejected

    def summary(self) -> str:
        lines = [f"Added {len(self.added)} file(s)."]
        if self.rejected:
            lines.append(f"Refused {len(self.rejected)}:")
            lines += [f"- {r}" for r in self.rejected]
        return "\n".join(lines)


def _unique(dest: Path) -> Path:
    if not dest.exists():
        return dest
    for i in range(1, 100_000):
        cand = dest.with_name(f"{dest.stem}-{i}{dest.suffix}")
        if not cand.exists():
            return cand
    raise FileExistsError(dest)


def check_image(data: bytes, name: str, limits: Limits) -> str | None:
    """None if `data` is an image we train on, else the reason it is refused."""
    if len(data) > limits.max_file_bytes:
        return f"larger than {limits.max_file_bytes // 2**20} MB"
    import io
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in IMAGE_FORMATS:
                return f"unsupported image format {im.format}"
            if im.width * im.height > limits.max_pixels:
                return f"{im.width}×{im.height} is more than {limits.max_pixels} pixels"
            im.verify()
    except Image.DecompressionBombError:
        return "image is a decompression bomb"
    except Exception as e:  # PIL raises many types for broken files
        return f"not a readable image ({type(e).__name__})"
    return None


def _store_file(data: bytes, name: str, folder: Path, limits: Limits) -> tuple[str | None, str | None]:
    """(stored relative name, None) or (None, reason)."""
    ext = Path(name).suffix.lower()
    stem = safe_name(Path(name).stem, "image", 80)
    if ext in IMAGE_EXTS:
        reason = check_image(data, name, limits)
        if reason:
            return None, reason
        dest = _unique(folder / f"{stem}{'.jpg' if ext == '.jpeg' else ext}")
    elif ext in CAPTION_EXTS:
        if len(data) > limits.max_caption_bytes:
            return None, "caption file too large"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None, "caption is not UTF-8 text"
        dest = folder / f"{stem}.txt"  # a caption replaces the image's caption of the same name
    else:
        return None, f"not an image or caption (allowed: {', '.join(sorted(IMAGE_EXTS | CAPTION_EXTS | {'.zip'}))})"
    atomic_write_bytes(dest, data)
    return f"{folder.name}/{dest.name}", None


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


def import_zip(zip_path: Path, dest_root: Path, limits: Limits) -> ImportReport:
    """Check every entry before extracting anything; one bad entry refuses the whole archive."""
    rep = ImportReport()
    label = Path(zip_path).name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        rep.rejected.append(f"{label}: not a readable zip ({e})")
        return rep
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_zip_entries:
            rep.rejected.append(f"{label}: {len(infos)} entries, more than {limits.max_zip_entries}")
            return rep
        total = sum(i.file_size for i in infos)
        if total > limits.max_zip_total_bytes:
            rep.rejected.append(f"{label}: unpacks to {total / 2**20:.0f} MB, more than "
                                f"{limits.max_zip_total_bytes // 2**20} MB")
            return rep
        for info in infos:
            problem = _zip_problem(info, limits)
            if problem:
                rep.rejected.append(f"{label}: refused, entry {info.filename!r}: {problem}")
                return rep
        for info in infos:
            parts = [p for p in re.split(r"[\\/]+", info.filename) if p]
            if info.is_dir() or not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            # keep one folder level: kohya `10_name` folders carry repeats
            folder = safe_name(parts[-2], LOOSE_FOLDER, 64) if len(parts) > 1 else LOOSE_FOLDER
            with zf.open(info) as f:
                data = f.read(info.file_size + 1)  # never trust the header's size
            if len(data) > info.file_size:
                rep.rejected.append(f"{label}:{info.filename}: size does not match its header")
                continue
            target = inside(dest_root, folder)
            stored, reason = _store_file(data, parts[-1], target, limits)
            (rep.added.append(stored) if stored else rep.rejected.append(f"{label}:{info.filename}: {reason}"))
    return rep


def import_uploads(paths: list[str | Path], dest_root: Path, limits: Limits = Limits(),
                   folder: str = LOOSE_FOLDER) -> ImportReport:
    """Add uploaded files (images, captions, zips) to a dataset folder, checking each on the server."""
    rep = ImportReport()
    target = inside(dest_root, safe_name(folder, LOOSE_FOLDER, 64))
    for p in paths:
        p = Path(p)
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
            rep.merge(import_zip(p, dest_root, limits))
            continue
        if size > limits.max_file_bytes:
            rep.rejected.append(f"{name}: larger than {limits.max_file_bytes // 2**20} MB")
            continue
        stored, reason = _store_file(p.read_bytes(), name, target, limits)
        (rep.added.append(stored) if stored else rep.rejected.append(f"{name}: {reason}"))
    return rep


def _own_file(p: Path, real_root: Path) -> bool:
    """A regular file that really lies in the dataset: a symlink planted there could point anywhere."""
    return p.is_file() and not p.is_symlink() and p.resolve().is_relative_to(real_root)


def list_images(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    real_root = root.resolve()
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and _own_file(p, real_root)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def caption_path(image: Path) -> Path:
    return image.with_suffix(".txt")


def read_caption(image: Path) -> str:
    for ext in (".txt", ".caption"):
        side = image.with_suffix(ext)
        if _own_file(side, image.parent.resolve()):
            return side.read_text(encoding="utf-8", errors="replace").strip()
    return ""


def write_caption(image: Path, text: str) -> None:
    atomic_write_text(caption_path(image), text.strip() + "\n")


def _tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def bulk_edit(root: Path, op: str, a: str = "", b: str = "") -> int:
    """Apply a caption tool to every image in the dataset; returns how many captions changed.
    op: trigger (put tag `a` first unless present), prefix, suffix, replace (a → b)."""
    changed = 0
    for img in list_images(root):
        old = read_caption(img)
        if op == "trigger":
            tags = _tags(old)
            new = old if a.strip() in tags else ", ".join([a.strip(), *tags])
        elif op == "prefix":
            new = f"{a}{old}"
        elif op == "suffix":
            new = f"{old}{a}"
        elif op == "replace":
            if not a:
                raise ValueError("find/replace: the text to find is empty")
            new = old.replace(a, b)
        else:
            raise ValueError(f"unknown caption tool {op!r}")
        if new != old:
            write_caption(img, new)
            changed += 1
    return changed


def tag_frequency(root: Path) -> list[tuple[str, int]]:
    counts = Counter(t for img in list_images(root) for t in _tags(read_caption(img)))
    return counts.most_common()


def folders(root: Path) -> list[tuple[str, int | None, int]]:
    """(folder, repeats from the `N_name` prefix or None, image count) for each image folder."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")) if root.is_dir() else []:
        m = _REPEAT_FOLDER.fullmatch(d.name)
        out.append((d.name, int(m.group(1)) if m else None, len(list_images(d))))
    return out


def set_repeats(root: Path, folder: str, repeats: int) -> str:
    """Rename a folder to kohya's `N_name` so its images repeat N times per epoch."""
    src = inside(root, folder)
    if src.parent != root.resolve() or not src.is_dir():
        raise ValueError(f"{folder}: not a folder of this dataset")
    if not 1 <= int(repeats) <= 1000:
        raise ValueError("repeats must be between 1 and 1000")
    m = _REPEAT_FOLDER.fullmatch(src.name)
    concept = m.group(2) if m else src.name
    dest = src.with_name(f"{int(repeats)}_{concept}")
    if dest != src:
        if dest.exists():
            raise FileExistsError(f"{dest.name}: a folder of that name exists")
        src.rename(dest)
    return dest.name


def copy_dataset(src: Path, dest: Path) -> int:
    """Snapshot the dataset into the run folder (images + captions), so later edits don't change a run."""
    n = 0
    for img in list_images(src):
        rel = img.relative_to(src)
        (dest / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy2(img, dest / rel)
        side = caption_path(img)
        if _own_file(side, img.parent.resolve()):
            shutil.copy2(side, dest / rel.with_suffix(".txt"))
        n += 1
    return n


def doctor_report(root: Path, caption_ext: str = ".txt", default_repeats: int = 1) -> str:
    """The dataset doctor's findings as Markdown (trainer.data.scan does the checking)."""
    try:
        from trainer.data.scan import doctor, scan_dataset
    except ImportError:
        return "_Dataset doctor unavailable (trainer.data.scan is not installed)._"
    try:
        scan = scan_dataset(root, caption_ext, default_repeats)
        findings = list(doctor(scan) or [])
    except Exception as e:  # the doctor must never take the page down
        return f"Dataset doctor could not read the dataset: {e}"
    if not findings:
        return f"Dataset doctor: {len(scan.items)} image(s), no problems found."
    lines = [f"Dataset doctor: {len(scan.items)} image(s), {len(findings)} finding(s):"]
    for f in findings[:50]:
        lines.append(f"- {_finding_text(f, root)}")
    return "\n".join(lines)


def _finding_text(f, root: Path) -> str:
    if isinstance(f, str):
        return f
    get = (lambda k: f.get(k)) if isinstance(f, dict) else (lambda k: getattr(f, k, None))
    sev, msg, file = get("severity") or get("level"), get("reason") or get("message") or str(f), get("file") or get("path")
    if file:
        try:
            file = Path(file).relative_to(root)
        except ValueError:
            pass
    return " ".join(x for x in (f"**{sev}**" if sev else "", f"`{file}`:" if file else "", str(msg)) if x)
