"""`python -m trainer meta FILE --out NEWFILE --set key=value … [--thumbnail PNG] [--show]`: a copy of
an adapter with edited metadata. The tensor bytes are copied unchanged, so sshs_model_hash stays the
same by design; sshs_legacy_hash and the file's SHA256 are those of the new file. Never overwrites."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.formats import safetensors_io as sio
from trainer.formats.metadata import MetadataError, privacy_problems, thumbnail_data_url
from trainer.formats.save import SaveResult, result_for, with_hashes, write_bytes

# short names for the keys artists edit most
ALIASES = {"title": "modelspec.title", "trigger": "modelspec.trigger_phrase",
           "trigger_phrase": "modelspec.trigger_phrase", "description": "modelspec.description",
           "author": "modelspec.author", "license": "modelspec.license", "tags": "modelspec.tags",
           "output_name": "ss_output_name"}


def edit_metadata(src, dst, updates: dict[str, str], thumbnail: bytes | None = None,
                  overwrite: bool = False) -> SaveResult:
    """Copy `src` to `dst` with `updates` applied to its metadata (a value of "" removes the key)."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise FileExistsError(f"{dst.name}: the output must be a new file, not the input")
    hdr = sio.read_header(src)
    with open(src, "rb") as f:
        f.seek(8 + hdr.header_len)
        data_section = f.read()
    meta = dict(hdr.metadata)
    for key, value in updates.items():
        key = ALIASES.get(key, key)
        if key in ("sshs_model_hash", "sshs_legacy_hash"):
            raise MetadataError(f"{key} is computed from the file, not set")
        if value == "":
            meta.pop(key, None)
        else:
            meta[key] = value
    if thumbnail is not None:
        meta["modelspec.thumbnail"] = thumbnail_data_url(thumbnail)
    problems = privacy_problems(meta)
    if problems:
        raise MetadataError(f"{dst.name}: " + "; ".join(problems))
    tensors = hdr.tensors
    data = with_hashes(lambda m: sio.assemble(tensors, m, data_section), meta)
    write_bytes(dst, data, overwrite)
    return result_for(dst, data)


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise MetadataError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer meta", description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--out", help="the new file (must not exist)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help=f"set a metadata key (short names: {', '.join(ALIASES)}); an empty value removes it")
    ap.add_argument("--thumbnail", help="PNG or JPEG preview to embed as modelspec.thumbnail")
    ap.add_argument("--show", action="store_true", help="print the metadata (of the new file, if --out)")
    a = ap.parse_args(argv)
    src = Path(a.file)
    try:
        if a.out:
            thumb = Path(a.thumbnail).read_bytes() if a.thumbnail else None
            res = edit_metadata(src, Path(a.out), _parse_sets(a.sets), thumb)
            print(f"wrote {res.path.name}: sshs_model_hash {res.model_hash}, sshs_legacy_hash {res.legacy_hash}, "
                  f"SHA256 {res.sha256} (AutoV2 {res.autov2})")
        elif a.sets or a.thumbnail:
            print("--set/--thumbnail need --out NEWFILE (files are never edited in place)", file=sys.stderr)
            return 2
        if a.show or not a.out:
            meta = sio.read_header(Path(a.out) if a.out else src).metadata
            for k in sorted(meta):
                v = meta[k]
                print(f"{k} = {v[:60] + '…' if k == 'modelspec.thumbnail' and len(v) > 60 else v}")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
