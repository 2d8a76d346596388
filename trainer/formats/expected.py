"""The module names and weight shapes a kohya file for a given base must use.

Real SD1.5 / SDXL: the reference tables in assets/lora_keys/*.tsv (taken from sd-scripts' naming).
Any other UNet (the tiny test models, SD2): derived from the model itself with the same target rules
as trainer.adapter.network, so the two can be compared in tests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from trainer.formats.names import all_sites
from trainer.models.base import ASSETS
from trainer.adapter.network import TEXT_ENCODER, UNET_ATTENTION, UNET_CONV

KEYS_DIR = ASSETS / "lora_keys"
TABLES = {"sd15": KEYS_DIR / "sd15.tsv", "sdxl": KEYS_DIR / "sdxl.tsv"}


@dataclass(frozen=True)
class Expected:
    kind: str  # "linear" / "conv"
    weight_shape: tuple[int, ...]  # the base weight's shape: [out, in] or [out, in, kh, kw]
    target: str  # "default" / "locon"


def read_table(name: str) -> dict[str, Expected]:
    path = TABLES[name] if name in TABLES else Path(name)
    out: dict[str, Expected] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if i == 0 or not line.strip():
            continue
        mod, kind, shape, target = line.split("\t")
        out[mod] = Expected(kind, tuple(int(d) for d in shape.split("x")), target)
    return out


def _target_of(component: str, path: str) -> str | None:
    if component == "unet":
        if re.fullmatch(UNET_ATTENTION, path):
            return "default"
        if re.fullmatch(UNET_CONV, path):
            return "locon"
        return None
    return "default" if re.fullmatch(TEXT_ENCODER, path) else None


def derive_from_model(base) -> dict[str, Expected]:
    """kohya name → Expected for every module the trainer's target rules select on this base."""
    out: dict[str, Expected] = {}
    for name, site in all_sites(base).items():
        path = site.path.replace(".base_layer", "")
        target = _target_of(site.component, path)
        if target is None:
            continue
        mod = site.module.get_base_layer() if hasattr(site.module, "get_base_layer") else site.module
        shape = tuple(mod.weight.shape)
        out[name] = Expected("conv" if len(shape) == 4 else "linear", shape, target)
    return out


def table_for(family: str, base=None) -> tuple[dict[str, Expected], str]:
    """(expected modules, where they come from) for a family; real-size models use the shipped table
    when the base matches it, anything else is derived from `base`."""
    if base is not None:
        derived = derive_from_model(base)
        ref = {"sd1": "sd15", "sdxl": "sdxl"}.get(family)
        if ref:
            table = read_table(ref)
            if derived.keys() == table.keys():
                return table, f"lora_keys/{ref}.tsv"
        return derived, "derived from the base model"
    ref = {"sd1": "sd15", "sdxl": "sdxl"}.get(family)
    if ref is None:
        raise ValueError(f"no reference table for family {family!r}; pass the base model")
    return read_table(ref), f"lora_keys/{ref}.tsv"


@lru_cache(maxsize=None)
def _reference(family: str) -> dict[str, Expected]:
    """The module table of the real architecture of a family (shipped for SD1.5/SDXL, built for SD2)."""
    ref = {"sd1": "sd15", "sdxl": "sdxl"}.get(family)
    if ref:
        return read_table(ref)
    from trainer.models.base import Base
    from trainer.models.random_arch import build_random

    m = build_random(family, ("unet", "text_encoder"), device="meta")
    return derive_from_model(Base(family=family, unet=m["unet"], vae=None, text_encoders=[m["text_encoder"]],
                                  tokenizers=[], scheduler=None))


def is_standard_architecture(base) -> bool:
    """True when every module the trainer can adapt on `base` has the name and weight shape the real
    SD1.5 / SD2 / SDXL has: only then does an adapter of it load in the clients' models."""
    try:
        ref = _reference(base.family)
    except (ValueError, OSError):
        return False
    derived = derive_from_model(base)
    unet_ref = {n: e for n, e in ref.items() if n.startswith("lora_unet_")}
    unet_own = {n: e for n, e in derived.items() if n.startswith("lora_unet_")}
    if unet_own.keys() != unet_ref.keys():
        return False
    # text encoders may be partial (the benchmark's SDXL keeps 2 of TE2's layers): what exists must match
    return all(n in ref and ref[n].weight_shape == e.weight_shape for n, e in derived.items())


def custom_base_label(base, spec: str) -> str | None:
    """None for a standard-architecture base; else what the adapter fits, for its metadata: the spec of a
    bundled/tiny base ("builtin:shapes"), or the base's own name (never a path)."""
    if is_standard_architecture(base):
        return None
    from trainer.models.spec import parse_base

    try:
        bundled = parse_base(spec).bundled
    except ValueError:
        bundled = False
    return spec if bundled else (base.name or "custom")
