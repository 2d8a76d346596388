"""`python -m trainer merge --base SPEC --lora FILE --out PATH [--strength S] [--format diffusers|single]`:
bake an adapter into its base, W' = W + strength·scale·ΔW (peft's own merge, so LoRA, DoRA, LoHa and
LoKr merge exactly as they apply).

Output: a diffusers folder (default; diffusers and this project load it), or with --format single one
.safetensors holding the diffusers-named weights of every component. That single file is NOT an
original-layout SD checkpoint (A1111 cannot load it), so its name must end in `.diffusers.safetensors`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from trainer.formats.kohya_import import ImportReport, apply_kohya
from trainer.formats.names import components

SINGLE_SUFFIX = ".diffusers.safetensors"


def merge_adapters(base) -> int:
    """Fold every injected peft layer into its base weight and put the plain layer back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for _, model in components(base):
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
        for name, layer in layers:
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
            n += 1
    return n


def merge_into(base, lora_path, strength: float = 1.0) -> ImportReport:
    """Apply a kohya/LyCORIS file to a base without adapters and merge it into the weights."""
    with torch.no_grad():
        rep = apply_kohya(base, lora_path, strength)
        merge_adapters(base)
    return rep


def save_merged(base, out, fmt: str = "diffusers", overwrite: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out.name}: exists; refusing to overwrite it")
    if fmt == "diffusers":
        tmp = out.with_name(f".{out.name}.partial")
        if tmp.exists():
            raise FileExistsError(f"{tmp.name}: a half-written merge is in the way; remove it")
        base.save_pretrained(tmp)
        if out.exists():  # overwrite=True: replace only once the new folder is complete
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        return out
    if fmt == "single":
        if not out.name.endswith(SINGLE_SUFFIX):
            raise ValueError(f"{out.name}: a single-file merge holds diffusers-named weights; name it "
                             f"*{SINGLE_SUFFIX} so nobody mistakes it for an original SD checkpoint")
        from safetensors.torch import save

        from trainer.formats.save import write_bytes

        parts = {"unet": base.unet, "vae": base.vae}
        parts.update({("text_encoder" if i == 0 else f"text_encoder_{i + 1}"): te
                      for i, te in enumerate(base.text_encoders)})
        tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
                   for name, model in parts.items() for k, v in model.state_dict().items()}
        meta = {"format": "pt", "layout": "diffusers-components", "family": base.family,
                "note": "diffusers key names (unet./vae./text_encoder.…), not an original Stable Diffusion checkpoint"}
        write_bytes(out, save(tensors, metadata=meta), overwrite)
        return out
    raise ValueError(f"unknown format {fmt!r}; use diffusers or single")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="base model: diffusers folder, single-file checkpoint, tiny:sd1 …")
    ap.add_argument("--lora", required=True, help="kohya / LyCORIS adapter file")
    ap.add_argument("--out", required=True, help="output folder (diffusers) or *.diffusers.safetensors (single)")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--format", choices=("diffusers", "single"), default="diffusers")
    a = ap.parse_args(argv)
    try:
        from trainer.models.resolve import load_any

        if Path(a.out).exists():
            raise FileExistsError(f"{Path(a.out).name}: exists; refusing to overwrite it")
        base = load_any(a.base)
        rep = merge_into(base, Path(a.lora), a.strength)
        out = save_merged(base, Path(a.out), a.format)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{rep.summary()}\nmerged at strength {a.strength:g} into {out.name} ({a.format})")
    if rep.not_in_model:
        print(f"warning: {len(rep.not_in_model)} modules of the file have no layer in this base", file=sys.stderr)
    return 0
