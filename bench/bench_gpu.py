"""GPU benchmark (not a test), sized for a few minutes on one CUDA GPU: SD1.5 at 512 px and SDXL at 1024 px,
batch 1 and 4, fp16 and bf16, gradient checkpointing off and on, PyTorch SDPA and (when installed) xformers.

For each case, in its own process: the floor (bare UNet forward+backward, same LoRA, shapes, dtype) — and,
for the batch-1 SDPA cases, our trainer too (ours ÷ floor, command → first step) — with peak VRAM
(torch.cuda.max_memory_allocated) and the trainer/estimate.py prediction beside it. Writes <out>/gpu.json
and <out>/gpu.md and prints the table.

    .venv/bin/python bench/bench_gpu.py            # on a machine with a GPU: a few minutes
    .venv/bin/python bench/bench_gpu.py --dry      # list the cases, run nothing
    .venv/bin/python bench/bench_gpu.py --tiny     # the whole path with the tiny model on whatever device
                                                   # there is (CPU here): checks the script, not the GPU
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness import make_dataset, measure_floor, measure_ours  # noqa: E402

FULL = {
    "sd15": {"model": "random:sd1", "resolution": 512},
    "sdxl": {"model": "random:sdxl", "resolution": 1024},
}
TINY = {"tiny": {"model": "tiny:sd1", "resolution": 64}}
STEPS, WARMUP = 6, 3


def xformers_available() -> bool:
    try:
        import torch
        import xformers.ops  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False


def cases(tiny: bool, device: str) -> list[dict]:
    """Per model: batch 1 in fp16 and bf16 with checkpointing off/on, batch 4 in bf16 off/on, and xformers
    beside SDPA at batch 1 bf16. Our trainer runs on batch 1, bf16, SDPA, checkpointing off; the variants
    measure the floor only (minutes matter)."""
    models = TINY if tiny else FULL
    half = device == "cuda"
    grid = ([(1, "float16", gc, "sdpa") for gc in (False, True)] if half else []) + \
        [(1, "bfloat16" if half else "float32", gc, "sdpa") for gc in (False, True)] + \
        [(4, "bfloat16" if half else "float32", gc, "sdpa") for gc in (False, True)]
    if half and xformers_available():
        grid += [(1, "bfloat16", gc, "xformers") for gc in (False, True)]
    out = []
    for (name, m), (batch, dtype, gc, attn) in itertools.product(models.items(), grid):
        out.append({"name": name, **m, "batch": batch, "dtype": dtype, "gradient_checkpointing": gc,
                    "attention": attn, "ours": batch == 1 and not gc and attn == "sdpa" and dtype != "float16"})
    return out


def config_for(case: dict, data: Path, device: str) -> dict:
    from trainer.config import TrainConfig, deep_merge

    mp = {"float16": "fp16", "bfloat16": "bf16", "float32": "no"}[case["dtype"]]
    over = {
        "model": {"base": case["model"]},
        "dataset": {"path": str(data), "resolution": case["resolution"], "batch_size": case["batch"],
                    "enable_buckets": False},
        "schedule": {"max_train_steps": STEPS + WARMUP + 1},
        "precision": {"device": device, "mixed_precision": mp,
                      "gradient_checkpointing": case["gradient_checkpointing"], "attention": case["attention"]},
        "sampling": {"prompts": [], "at_start": False, "every_n_steps": 0},
        "saving": {"output_name": f"bench-{case['name']}"},
    }
    return deep_merge(TrainConfig().model_dump(mode="json"), over)


def run_case(case: dict, work: Path, device: str, timeout: float) -> dict:
    from trainer.config import from_dict, save_config
    from trainer.estimate import estimate

    tag = f"{case['name']}-b{case['batch']}-{case['dtype']}-gc{int(case['gradient_checkpointing'])}-{case['attention']}"
    folder = work / tag
    data = make_dataset(folder / "data", max(4, 2 * case["batch"]), case["resolution"])
    cfg_dict = config_for(case, data, device)
    cfg = from_dict(cfg_dict)
    row = {**case, "tag": tag, "device": device}
    try:
        floor = measure_floor({"model": case["model"], "network": cfg_dict["network"],
                               "resolution": case["resolution"], "batch": case["batch"], "dtype": case["dtype"],
                               "device": device, "warmup": WARMUP, "steps": STEPS,
                               "gradient_checkpointing": case["gradient_checkpointing"],
                               "attention": case["attention"]}, None, timeout, folder / "floor.json")
        row.update(floor_s_per_step=floor["s_per_step"], floor_peak_vram_bytes=floor.get("peak_vram_bytes"),
                   floor_peak_rss_bytes=floor["peak_rss_bytes"])
        if case["ours"]:
            run = folder / "run"
            run.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run / "config.toml")
            ours = measure_ours(run / "config.toml", run, WARMUP, None, timeout)
            row.update(ours_s_per_step=ours["s_per_step"], ratio=ours["s_per_step"] / floor["s_per_step"],
                       peak_vram_bytes=ours["peak_vram_bytes"], peak_rss_bytes=ours["peak_rss_bytes"],
                       startup_to_first_step_s=ours["startup_to_first_step_s"])
    except RuntimeError as e:  # e.g. out of memory: a result too
        row["error"] = str(e)[-600:]
    est = estimate(cfg, device=device if device in ("cpu", "cuda") else "cpu")
    row["estimate"] = {"peak_memory_bytes": est["peak_memory_bytes"], "seconds_per_step": est["seconds_per_step"],
                       "measured_calibration": est["measured"]}
    return row


def markdown(report: dict) -> str:
    def gb(x):
        return f"{x / 1e9:.2f} GB" if x else "–"

    rows = [f"# GPU benchmark — {report['date']}", "", f"Device: {report['device_name']}; torch {report['torch']}.",
            "", "| model | px | batch | dtype | grad ckpt | attention | floor s/step | ours s/step | ours ÷ floor "
            "| peak VRAM (floor / ours) | est. VRAM | est. s/step | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        e = r["estimate"]
        ours = r.get("ours_s_per_step")
        rows.append(
            f"| {r['name']} | {r['resolution']} | {r['batch']} | {r['dtype']} | {'on' if r['gradient_checkpointing'] else 'off'} "
            f"| {r['attention']} | {r.get('floor_s_per_step', float('nan')):.3f} | "
            f"{'%.3f' % ours if ours else '–'} | {'%.2f' % r['ratio'] if ours else '–'} | "
            f"{gb(r.get('floor_peak_vram_bytes'))} / {gb(r.get('peak_vram_bytes'))} | {gb(e['peak_memory_bytes'])} | "
            f"{e['seconds_per_step']:.3f} | {('error: ' + r['error'].splitlines()[-1][:80]) if r.get('error') else ''} |")
    return "\n".join(rows) + "\n"


def run_bench(tiny: bool = False, out_dir: str | Path = HERE / "results", work: str | Path = "/tmp/atelier-bench-gpu",
              timeout: float = 900, only: list[str] | None = None, max_cases: int | None = None) -> dict:
    import shutil

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not tiny and device != "cuda":
        raise SystemExit("bench_gpu: no CUDA device here; use --tiny to check the script on CPU, or --dry")
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    todo = [c for c in cases(tiny, device) if not only or c["name"] in only][:max_cases]
    results = []
    for i, case in enumerate(todo, 1):
        print(f"[bench-gpu] {i}/{len(todo)} {case}", file=sys.stderr, flush=True)
        results.append(run_case(case, work, device, timeout))
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__, "tiny": tiny,
              "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (script check only)",
              "results": results}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-tiny" if tiny else "gpu"
    from trainer.run.atomic import atomic_write_bytes

    atomic_write_bytes(out / f"{stem}.json", json.dumps(report, indent=1).encode())
    md = markdown(report)
    atomic_write_bytes(out / f"{stem}.md", md.encode())
    print(md)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="print the cases and exit")
    ap.add_argument("--tiny", action="store_true", help="tiny model on the available device (script check)")
    ap.add_argument("--only", default="", help="comma-separated model names (sd15, sdxl)")
    ap.add_argument("--max-cases", type=int, default=None, help="run only the first N cases")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--work", default="/tmp/atelier-bench-gpu")
    a = ap.parse_args(argv)
    only = [x for x in a.only.split(",") if x] or None
    if a.dry:
        device = "cuda" if os.path.exists("/dev/nvidia0") else "cpu"
        for c in cases(a.tiny, "cuda" if not a.tiny else device):
            if not only or c["name"] in only:
                print(json.dumps(c))
        return 0
    run_bench(a.tiny, a.out, a.work, only=only, max_cases=a.max_cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
