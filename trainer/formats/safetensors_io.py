"""Read safetensors headers strictly, and the hashes Civitai and A1111 use.

A safetensors file is: 8-byte little-endian header length N, N bytes of JSON header, tensor data.
Nothing here unpickles or executes anything from a file.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


class SafetensorsError(ValueError):
    """A malformed or unsafe safetensors file; the message names the file and the reason."""


@dataclass
class Header:
    header_len: int
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict  # str -> str


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise SafetensorsError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def read_header(path: str | Path) -> Header:
    """Parse and validate the header: size limits, duplicate keys, string metadata, offsets that lie
    inside the file, are contiguous and do not overlap."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path.name}: truncated (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise SafetensorsError(f"{path.name}: header length {n} exceeds the file or the {MAX_HEADER} limit")
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsError(f"{path.name}: cannot read: {e.strerror}") from None
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as e:
        raise SafetensorsError(f"{path.name}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path.name}: header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise SafetensorsError(f"{path.name}: header is not a JSON object")
    meta = obj.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SafetensorsError(f"{path.name}: metadata values must all be strings")
    data_len = size - 8 - n
    spans = []
    for name, info in obj.items():
        if not isinstance(info, dict) or {"dtype", "shape", "data_offsets"} - info.keys():
            raise SafetensorsError(f"{path.name}: tensor {name!r} has a malformed entry")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)):
            raise SafetensorsError(f"{path.name}: tensor {name!r} has a malformed shape or offsets")
        start, end = offs
        numel = 1
        for d in shape:
            numel *= d
        if not (0 <= start <= end <= data_len) or end - start != numel * DTYPE_SIZES[dtype]:
            raise SafetensorsError(f"{path.name}: tensor {name!r} offsets {offs} do not fit its shape or the file "
                                   f"(truncated file?)")
        spans.append((start, end, name))
    spans.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise SafetensorsError(f"{path.name}: tensors {n0!r} and {n1!r} overlap")
    return Header(header_len=n, tensors=obj, metadata=meta)


def load_file_checked(path: str | Path, device: str = "cpu") -> tuple[dict, dict]:
    """(tensors, metadata) after validating the header; never unpickles."""
    from safetensors.torch import load_file

    hdr = read_header(path)
    try:
        return load_file(str(path), device=device), hdr.metadata
    except Exception as e:  # safetensors' own checks, e.g. a short data section
        raise SafetensorsError(f"{Path(path).name}: cannot load tensors ({e})") from None


def model_hash(path: str | Path) -> str:
    """sshs_model_hash / Civitai AutoV3: sha256 of the tensor data (everything after the header), so
    editing metadata keeps it."""
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def legacy_hash(path: str | Path) -> str:
    """sshs_legacy_hash: first 8 hex of sha256 of the 64 KiB at offset 1 MiB (A1111's old short hash)."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def split_bytes(data: bytes) -> tuple[int, bytes]:
    """(header length, tensor data section) of a serialized safetensors file."""
    if len(data) < 8:
        raise SafetensorsError("serialized data is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    return n, data[8 + n:]


def model_hash_bytes(data: bytes) -> str:
    return hashlib.sha256(split_bytes(data)[1]).hexdigest()


def legacy_hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def assemble(tensors: dict, metadata: dict, data_section: bytes) -> bytes:
    """A safetensors file from header tensor entries (as read_header returns them), new metadata and
    the unchanged data section: the tensor bytes, and so sshs_model_hash, stay identical."""
    header = {"__metadata__": dict(metadata), **tensors} if metadata else dict(tensors)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + data_section
