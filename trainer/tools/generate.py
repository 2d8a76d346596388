"""`python -m trainer generate`: images from a base with adapters at several strengths (the studio's
compare tab runs this as a subprocess, so the GUI process never holds a model).

Cells: one row per --adapter (named by its --label), one column per strength, for each --prompt (prompt i
uses seed + i, as the run's previews do). --grid also writes <out>/grid.png, the cells in one labelled image."""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from trainer.run.atomic import atomic_write_bytes
from trainer.train.sampling import SAMPLERS, SampleSpec, a1111_parameters, generate, save_png
from trainer.tools.grid import GridBlock, compose_grid, strength_label

GRID_FILE = "grid.png"


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
    ap.add_argument("--label", action="append", default=[],
                    help="row label of the adapter at the same position (repeatable; default: its file name)")
    ap.add_argument("--prompt", action="append", required=True, help="repeatable: one block of rows each")
    ap.add_argument("--negative", default="")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the first prompt; prompt i uses seed + i")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpmpp_2m")
    ap.add_argument("--size", type=int, default=0, help="pixels per side (0: the family's default)")
    ap.add_argument("--strengths", type=_strengths, default=[0.0, 0.5, 1.0])
    ap.add_argument("--out", required=True, help="folder for the PNGs")
    ap.add_argument("--grid", action="store_true", help=f"also write <out>/{GRID_FILE}, a labelled grid")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    if len(a.label) > len(a.adapter):
        ap.error(f"--label given {len(a.label)} times for {len(a.adapter)} --adapter")

    from trainer.formats.kohya_import import KohyaImportError, apply_kohya
    from trainer.models.resolve import load_any
    from trainer.adapter.network import set_adapter_scale

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    adapters = a.adapter or [None]
    labels = [a.label[i] if i < len(a.label) else (Path(p).stem if p else "base") for i, p in enumerate(adapters)]
    cells: dict[tuple[int, int], list] = {}  # (prompt, row) -> one image per column
    zero: dict[int, object] = {}  # strength 0 is the base exactly: drawn once per prompt, reused by every row
    try:
        for row, adapter in enumerate(adapters):
            base = load_any(a.base)
            size = a.size or native_size(base)
            if adapter:
                apply_kohya(base, Path(adapter))
            strengths = a.strengths if adapter else [0.0]
            for pi, prompt in enumerate(a.prompt):
                spec = SampleSpec(prompt=prompt, seed=a.seed + pi, negative=a.negative, steps=a.steps, guidance_scale=a.cfg,
                                  sampler=a.sampler, width=size, height=size)
                for strength in strengths:
                    if strength == 0 and pi in zero:
                        img = zero[pi]
                    else:
                        if adapter:
                            for m in [base.unet, *base.text_encoders]:
                                set_adapter_scale(m, strength)
                        img = generate(base, spec)
                        if strength == 0:
                            zero[pi] = img
                    lora = (Path(adapter).stem, strength) if adapter and strength else None
                    path = out / f"r{row}_p{pi}_s{strength:g}.png"
                    save_png(img, path, a1111_parameters(spec, base.name, lora))
                    cells.setdefault((pi, row), []).append(img)
                    results.append({"path": str(path), "adapter": Path(adapter).name if adapter else None,
                                    "label": labels[row], "row": row, "prompt": prompt, "prompt_index": pi,
                                    "strength": strength, "seed": spec.seed})
            del base
        if a.grid:
            blocks = [GridBlock(f"prompt {pi + 1}: {p}" if len(a.prompt) > 1 else None,
                                [(labels[r], cells[(pi, r)]) for r in range(len(adapters))])
                      for pi, p in enumerate(a.prompt)]
            cols = [strength_label(s) for s in (a.strengths if a.adapter else [0.0])]
            buf = io.BytesIO()
            compose_grid(blocks, cols).save(buf, format="PNG")
            atomic_write_bytes(out / GRID_FILE, buf.getvalue())
    except (KohyaImportError, OSError, ValueError) as e:
        print(f"generate: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['path']}  {r['label']}  strength {r['strength']:g}  prompt {r['prompt_index'] + 1}")
        if a.grid:
            print(out / GRID_FILE)
    return 0
