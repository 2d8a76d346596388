"""Adapter files the Generate tab can use besides runs: uploads (kept in <data>/adapters) and LoRAs found in
the models folders. Checked here from the header alone (torch-free); `trainer generate` parses them fully."""
from __future__ import annotations

import hashlib
from pathlib import Path

from trainer.data.scan import file_sha256
from trainer.formats.safetensors_io import SafetensorsError, read_header
from trainer.run.atomic import write_new_file

from ui.paths import UnsafePath, inside, safe_name

# tensor-name endings of the kohya / LyCORIS kinds the trainer imports (trainer/formats/kohya_import.py);
# enough to tell an adapter from a base checkpoint without loading torch
ADAPTER_TENSOR_ENDINGS = (".lora_down.weight", ".hada_w1_a", ".lokr_w1", ".lokr_w1_a")


class AdapterFileError(ValueError):
    """An upload that is not a usable adapter; the message names the file."""


def adapters_dir(data_root: Path) -> Path:
    return Path(data_root) / "adapters"


def describe(path: Path, shown_name: str | None = None) -> str:
    """'N modules (LoRA)' for a kohya-format adapter; AdapterFileError naming the file otherwise."""
    name = shown_name or path.name
    if not name.lower().endswith(".safetensors"):
        raise AdapterFileError(f"{name}: not a .safetensors file (adapters are kohya-format .safetensors)")
    try:
        hdr = read_header(path)
    except SafetensorsError as e:
        raise AdapterFileError(f"{name}: not a readable safetensors file ({str(e).removeprefix(path.name + ': ')})") \
            from None
    kinds = {"LoRA" if k.endswith(".lora_down.weight") else "LoHa" if k.endswith(".hada_w1_a") else "LoKr"
             for k in hdr.tensors if k.endswith(ADAPTER_TENSOR_ENDINGS)}
    modules = {k.split(".", 1)[0] for k in hdr.tensors if k.endswith(ADAPTER_TENSOR_ENDINGS)}
    if not modules:
        raise AdapterFileError(f"{name}: a safetensors file without LoRA/LoHa/LoKr tensors "
                               f"({len(hdr.tensors)} tensors; a base model checkpoint?)")
    return f"{len(modules)} modules ({', '.join(sorted(kinds))})"


def import_upload(upload: Path, shown_name: str, dest: Path) -> tuple[Path, str]:
    """Check an uploaded file and copy it into `dest` under a safe name; never overwrites another file (an
    identical file already there is reused). Returns (path, description)."""
    info = describe(upload, shown_name)
    dest.mkdir(parents=True, exist_ok=True)
    stem = safe_name(Path(shown_name).stem, "adapter")
    data = upload.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for i in range(1000):
        target = inside(dest, f"{stem}{f'-{i + 1}' if i else ''}.safetensors")
        if target.exists():
            if file_sha256(target) == digest:
                return target, info
            continue
        try:
            write_new_file(target, data)
        except FileExistsError:  # another upload took the name meanwhile
            continue
        return target, info
    raise AdapterFileError(f"{shown_name}: too many adapters named {stem}")


def adapter_choices(roots: list[Path]) -> list[tuple[str, str]]:
    """(label, path) of every adapter file in the roots (uploads first, then the models folders)."""
    out, seen = [], set()
    for root in roots:
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*.safetensors")):
            if p in seen or p.name.startswith("."):
                continue
            seen.add(p)
            try:
                describe(p)
            except AdapterFileError:
                continue  # a base checkpoint or a broken file: not offered as an adapter
            out.append((f"{p.relative_to(root)} ({root.name})", str(p)))
    return out


def resolve_choice(roots: list[Path], value: str) -> Path:
    """A picked adapter path (from the browser), allowed only inside the roots."""
    for root in roots:
        try:
            p = inside(root, value)
        except UnsafePath:
            continue
        if p.is_file():
            return p
    raise UnsafePath(f"{Path(value).name}: not an adapter in {', '.join(str(r) for r in roots)}")
