"""QLoRA's saving, measured: bytes of the frozen base's Linear weights in NF4 (packed codes + absmax
+ double-quantisation state, as bitsandbytes stores them) against fp16, on the architecture-true SD1.5
UNet and text encoder (random weights). SDXL (2.6 G parameters, 10 GB in fp32 to build) is estimated
from its meta-device shapes with the bytes-per-weight measured on SD1.5, and labelled so.

    OMP_NUM_THREADS=2 .venv/bin/python bench/qlora_memory.py   # writes bench/results/qlora.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.run.atomic import atomic_write_bytes  # noqa: E402
from trainer.models.random_arch import build_random  # noqa: E402
from trainer.adapter.quantize import quantize_nf4  # noqa: E402

MiB = 2 ** 20


def split_bytes(model) -> tuple[int, int]:
    """(weights of nn.Linear layers, everything else), counted at 2 bytes a parameter (fp16)."""
    lin = sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear)
    return lin * 2, sum(p.numel() for p in model.parameters()) * 2 - lin * 2


def measure(family: str, part: str) -> dict:
    model = build_random(family, (part,), device="cpu")[part]
    lin16, rest16 = split_bytes(model)
    t0 = time.time()
    rep = quantize_nf4(model, "cpu")
    secs = time.time() - t0
    return {"model": f"{family} {part}", "layers": rep.layers, "params": rep.params, "nf4": rep.bytes_nf4,
            "fp16": rep.bytes_fp16, "rest16": rest16, "seconds": secs, "measured": True}


def estimate(family: str, part: str, bytes_per_weight: float) -> dict:
    model = build_random(family, (part,), device="meta")[part]
    lin16, rest16 = split_bytes(model)
    n = lin16 // 2
    layers = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    return {"model": f"{family} {part}", "layers": layers, "params": n, "nf4": int(n * bytes_per_weight),
            "fp16": lin16, "rest16": rest16, "seconds": float("nan"), "measured": False}


def main() -> None:
    rows = [measure("sd1", "unet"), measure("sd1", "text_encoder")]
    bpw = rows[0]["nf4"] / rows[0]["params"]
    rows += [estimate("sdxl", "unet", bpw), estimate("sdxl", "text_encoder", bpw),
             estimate("sdxl", "text_encoder_2", bpw)]
    lines = ["# QLoRA: memory of the frozen base", "",
             "Linear weights of the frozen model in bitsandbytes NF4 (blocksize 64, double-quantised absmax) vs",
             "fp16. Convolutions, norms and embeddings stay unquantised (bitsandbytes has no 4-bit conv); the",
             "\"whole model\" columns add them at fp16. Measured on this machine by `bench/qlora_memory.py`;",
             f"SDXL rows are estimates from the meta shapes at the measured {bpw:.4f} bytes/weight.", "",
             "| model | Linear layers | Linear weights | NF4 MiB | fp16 MiB | ratio | whole model fp16 MiB | whole model QLoRA MiB | quantise s | |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        whole16 = r["fp16"] + r["rest16"]
        whole_q = r["nf4"] + r["rest16"]
        lines.append(f"| {r['model']} | {r['layers']} | {r['params']:,} | {r['nf4'] / MiB:.1f} | {r['fp16'] / MiB:.1f} "
                     f"| {r['nf4'] / r['fp16']:.3f} | {whole16 / MiB:.1f} | {whole_q / MiB:.1f} | "
                     f"{r['seconds']:.1f} | {'measured' if r['measured'] else 'estimate'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = REPO / "bench" / "results" / "qlora.md"
    atomic_write_bytes(out, text.encode("utf-8"))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
