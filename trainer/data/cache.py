"""Content-addressed caches of encoder outputs (VAE latents, text-encoder embeddings).

An entry's name is a hash of everything its value depends on: the image's bytes, bucket, resize, crop and
flip (or the caption text) and an encoder id string that changes when the encoder's weights or the
encoding recipe do. So a later run reuses what is still valid, and editing one image or caption
invalidates that entry alone. On disk each entry is one small safetensors file, written atomically
(a crash leaves the old entry or none, never half of one); nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from trainer.run.atomic import atomic_write_bytes
from trainer.data.scan import CACHE_DIR_NAME

FORMAT = "atelier-cache-v1"
Tensors = dict[str, torch.Tensor]


def default_cache_dir(dataset_root: str | Path) -> Path:
    """<dataset>/.atelier-cache — beside the images, so a later run on the same folder finds it."""
    return Path(dataset_root) / CACHE_DIR_NAME


def stable_key(**parts) -> str:
    """sha256 of a canonical JSON of the parts: the same inputs give the same key in every process."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def fingerprint_module(module: torch.nn.Module, extra: str = "") -> str:
    """A short hash of a module's weights (names, shapes, dtypes and values) plus `extra` (e.g. the
    scaling factor): part of an encoder id, so caches from another VAE or text encoder are not reused."""
    h = hashlib.sha256(extra.encode("utf-8"))
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


class TensorCache:
    """A memory (and, when `dir` is given, disk) store of small tensor dicts under content keys.

    `stats` counts what happened, so callers and tests can see whether an encoder ran:
    computed (values put after a miss), disk_hits, memory_hits, corrupt (unreadable files, recomputed)."""

    kind = "tensors"

    def __init__(self, dir: str | Path | None, encoder_id: str, *, keep_in_memory: bool = True):
        if not encoder_id:
            raise ValueError("encoder_id must name the encoder (and its weights), e.g. 'sd1-vae:<hash>'")
        self.encoder_id = encoder_id
        self.dir = Path(dir) / self.kind if dir is not None else None
        self.keep_in_memory = keep_in_memory
        self._mem: dict[str, Tensors] = {}
        self.stats = {"computed": 0, "disk_hits": 0, "memory_hits": 0, "corrupt": 0}
        self.warnings: list[str] = []

    def entry_name(self, key: str) -> str:
        return stable_key(kind=self.kind, encoder=self.encoder_id, key=key)

    def path_of(self, key: str) -> Path | None:
        return self.dir / f"{self.entry_name(key)}.safetensors" if self.dir is not None else None

    def contains(self, key: str) -> bool:
        if key in self._mem:
            return True
        p = self.path_of(key)
        return p is not None and p.is_file()

    def get(self, key: str) -> Tensors | None:
        if key in self._mem:
            self.stats["memory_hits"] += 1
            return self._mem[key]
        p = self.path_of(key)
        if p is None or not p.is_file():
            return None
        value = self._read(p, key)
        if value is None:
            return None
        self.stats["disk_hits"] += 1
        if self.keep_in_memory:
            self._mem[key] = value
        return value

    def _read(self, p: Path, key: str) -> Tensors | None:
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or meta.get("key") != key or meta.get("encoder_id") != self.encoder_id:
                    raise ValueError("entry metadata does not match")
                return {name: f.get_tensor(name) for name in f.keys()}
        except Exception:  # a torn or foreign file is a miss; the recomputed entry replaces it atomically
            self.stats["corrupt"] += 1
            return None

    def put(self, key: str, value: Tensors) -> None:
        value = {k: v.detach().to("cpu").contiguous() for k, v in value.items()}
        self.stats["computed"] += 1
        if self.keep_in_memory:
            self._mem[key] = value
        p = self.path_of(key)
        if p is None:
            return
        meta = {"format": FORMAT, "key": key, "encoder_id": self.encoder_id, "kind": self.kind}
        try:
            atomic_write_bytes(p, st_save(value, metadata=meta))
        except OSError as e:
            # a read-only dataset folder must not stop training: carry on in memory
            self.warnings.append(f"cache folder {self.dir} not writable ({e.strerror or e}); caching in memory only")
            self.dir = None
            self._mem[key] = value

    def __len__(self) -> int:
        return len(self._mem)


class LatentCache(TensorCache):
    """VAE latents, one entry per (image bytes, bucket, resize, crop, flip); value {"latents": [C, h, w]}."""

    kind = "latents"


class MaskCache(TensorCache):
    """Loss masks at latent resolution, one entry per (mask bytes, bucket, resize, crop, flip, latent size);
    value {"mask": [1, h, w]}. Kept beside the latents (same folder, same lifetime); no encoder runs, so
    the id names the recipe (trainer.data.dataset.TrainDataset.mask)."""

    kind = "masks"


MASK_RECIPE = "mask-area-mean-v1"


class TextCache(TensorCache):
    """Text-encoder outputs per caption; value: whatever tensors the trainer's encode_fn returns
    (e.g. hidden states, and pooled output for SDXL), without the batch dimension."""

    kind = "text"


def text_key(caption: str) -> str:
    return stable_key(caption=caption)
