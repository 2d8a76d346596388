"""Write an adapter file: kohya tensors + metadata, hashes on exactly the bytes written, atomically,
never over an existing file unless asked."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainer.run.atomic import atomic_write_bytes, write_new_file
from trainer.formats import safetensors_io as sio
from trainer.formats.kohya_export import ExportError, file_rank_and_alpha, kohya_tensors
from trainer.formats.metadata import HASH_KEYS, MetadataError, privacy_problems
from trainer.formats.names import adapted_sites

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LEGACY_WINDOW = 0x100000  # sshs_legacy_hash reads 64 KiB from here


@dataclass
class SaveResult:
    path: Path
    sha256: str  # whole file: Civitai's SHA256
    model_hash: str  # sshs_model_hash / AutoV3
    legacy_hash: str  # sshs_legacy_hash

    @property
    def autov2(self) -> str:
        return self.sha256[:10]


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ExportError(f"save dtype {dtype} not supported; use fp16, bf16 or fp32")
        return dtype
    if dtype not in DTYPES:
        raise ExportError(f"save dtype {dtype!r} not supported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def prepare_tensors(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """CPU, contiguous, in the save dtype (alpha stays fp32: its value is the scale), all finite."""
    out = {}
    for key, t in tensors.items():
        if t.is_meta:
            raise ExportError(f"{key}: tensor has no data (meta device)")
        t = t.detach().to("cpu")
        t = t.float() if key.endswith(".alpha") else t.to(dtype)
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ExportError(f"{key}: {bad} non-finite value(s) (NaN/inf) in {str(dtype).replace('torch.', '')}; "
                              "refusing to write a broken adapter")
        out[key] = t.contiguous()
    return out


def with_hashes(build: Callable[[dict], bytes], metadata: dict[str, str]) -> bytes:
    """Serialize with the sshs hashes of the final bytes. The placeholders have the final length, so
    the layout does not move when the real values go in; the legacy window must lie past the header
    (true unless the header passes 1 MiB)."""
    meta = {k: v for k, v in metadata.items() if k not in HASH_KEYS}
    draft = build({**meta, "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8})
    n, _ = sio.split_bytes(draft)
    if 8 + n > LEGACY_WINDOW:
        raise MetadataError(f"header is {n} bytes; it must stay under 1 MiB (a smaller thumbnail?)")
    final = build({**meta, "sshs_model_hash": sio.model_hash_bytes(draft),
                   "sshs_legacy_hash": sio.legacy_hash_bytes(draft)})
    if len(final) != len(draft) or sio.split_bytes(final)[0] != n:
        raise MetadataError("internal: header length changed while writing the hashes")
    return final


def write_bytes(path: Path, data: bytes, overwrite: bool) -> None:
    if overwrite:
        atomic_write_bytes(path, data)
        return
    try:
        write_new_file(path, data)
    except FileExistsError:
        raise FileExistsError(f"{path.name}: file exists; refusing to overwrite it (pass overwrite=True)") from None


def result_for(path: Path, data: bytes) -> SaveResult:
    return SaveResult(path=path, sha256=hashlib.sha256(data).hexdigest(), model_hash=sio.model_hash_bytes(data),
                      legacy_hash=sio.legacy_hash_bytes(data))


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], dtype="fp16",
                 overwrite: bool = False) -> SaveResult:
    """Write kohya tensors + metadata (+ sshs hashes) to `path`."""
    from safetensors.torch import save

    path = Path(path)
    problems = privacy_problems(metadata)
    if problems:
        raise MetadataError(f"{path.name}: " + "; ".join(problems))
    prepared = prepare_tensors(tensors, resolve_dtype(dtype))
    data = with_hashes(lambda meta: save(prepared, metadata=meta), metadata)
    write_bytes(path, data, overwrite)
    return result_for(path, data)


def save_adapter(path, base, network_info, metadata: dict[str, str], dtype="fp16",
                 overwrite: bool = False) -> SaveResult:
    """Export the peft adapters injected into `base` as a kohya/LyCORIS file.

    network_info: the trainer.adapter.network.Network that build_network returned (or None); when given, the
    adapted components must match it. metadata: build_metadata(cfg, facts, minimal)."""
    if network_info is not None:
        comps = {s.component for s in adapted_sites(base).values()}
        want = ({"unet"} if network_info.unet else set()) | {f"te{i}" for i in network_info.text_encoders}
        if comps != want:
            raise ExportError(f"adapters found on {sorted(comps)} but the network was built for {sorted(want)}")
    tensors = kohya_tensors(base)
    return save_tensors(path, tensors, describe_ranks(metadata, tensors), dtype, overwrite)


def describe_ranks(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """ss_network_dim / ss_network_alpha as the file has them (AdaLoRA prunes below the configured rank,
    a LoftQ file is rank 2r), where the metadata has them at all."""
    found = file_rank_and_alpha(tensors)
    if found is None or "ss_network_dim" not in metadata:
        return metadata
    rank, alpha = found
    if str(rank) == metadata["ss_network_dim"]:
        return metadata  # as configured (the alpha there is the user's own spelling of it)
    return {**metadata, "ss_network_dim": str(rank), "ss_network_alpha": str(round(float(alpha), 6))}
