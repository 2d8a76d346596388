"""`python -m trainer generate`: images from a base with adapters at several strengths (the studio's
compare tab runs this as a subprocess, so the GUI process never holds a model)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer.train.sampling import SAMPLERS, SampleSpec, a1111_parameters, generate, save_png


def native_size(base) -> int:
    """The resolution the base was trained at: UNet latent size × the VAE's downscale."""
    return int(base.unet.config.sample_size) * 2 ** (len(base.vae.config.block_out_channels) - 1)


def _strengths(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--strengths: not a list of numbers: {text!r}") from None
    if not values or any(not -4 <= v <= 4 for v in values):
        raise argparse.ArgumentTypeError("--strengths: give 1+ values between -4 and 4, e.g. 0,0.5,1")
    return values


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer generate")
    ap.add_argument("--base", required=True, help="base model (as model.base in a config)")
    ap.add_argument("--adapter", action="append", default=[], help="kohya LoRA file (repeatable: one row each)")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative", default="")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp_2m")
    ap.add_argument("--size", type=int, default=0, help="pixels per side (0: the family's default)")
    ap.add_argument("--strengths", type=_strengths, default=[0.0, 0.5, 1.0])
    ap.add_argument("--out", required=True, help="folder for the PNGs")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)

    from trainer.formats.kohya_import import KohyaImportError, apply_kohya
    from trainer.models.resolve import load_any
    from trainer.adapter.network import set_adapter_scale

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    adapters = a.adapter or [None]
    try:
        for row, adapter in enumerate(adapters):
            base = load_any(a.base)
            size = a.size or native_size(base)
            if adapter:
                apply_kohya(base, Path(adapter))
            for strength in (a.strengths if adapter else [0.0]):
                if adapter:
                    for m in [base.unet, *base.text_encoders]:
                        set_adapter_scale(m, strength)
                spec = SampleSpec(prompt=a.prompt, seed=a.seed, negative=a.negative, steps=a.steps,
                                  guidance_scale=a.cfg,
                                  sampler=a.sampler, width=size, height=size)
                img = generate(base, spec)
                lora = (Path(adapter).stem, strength) if adapter and strength else None
                path = out / f"r{row}_s{strength:g}.png"
                save_png(img, path, a1111_parameters(spec, base.name, lora))
                results.append({"path": str(path), "adapter": Path(adapter).name if adapter else None,
                                "strength": strength, "seed": a.seed})
    except (KohyaImportError, OSError, ValueError) as e:
        print(f"generate: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['path']}  strength {r['strength']:g}")
    return 0
