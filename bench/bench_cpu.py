"""CPU benchmark (not a test): our trainer against the floor, for the tiny model and the architecture-true
SD1.5 and SDXL UNets (random weights), batch 1, fp32, LoRA at the default settings, caching on.

Per model it measures, each in its own process: our steady-state seconds per step and the floor's (a bare
forward+backward of the same UNet, same LoRA, same shapes and dtype) and their ratio; peak RSS; start-up
from command to first step; the cost of a preview image, of the latent/text cache and of saving; and from
these the share of wall time that previews, data loading and saving take in a run at the default settings
(1000 steps, a preview every 100 with the base image at step 0, 20 sampling steps, one prompt, one save
at the end). It also checks trainer/estimate.py against the measurement. Writes <out>/cpu.json and
<out>/cpu.md and prints the table.

    .venv/bin/python bench/bench_cpu.py                  # all three models, a few minutes at low load
    .venv/bin/python bench/bench_cpu.py --models tiny    # seconds
From Python: `from bench.bench_cpu import run_bench; run_bench(["tiny", "sd15", "sdxl"])`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness import make_dataset, measure_floor, measure_ours  # noqa: E402

# size of each benchmark; sample_steps < 20 are scaled to the default 20 (previews on CPU are slow)
MODELS = {
    "tiny": {"model": "tiny:sd1", "label": "tiny SD1 (1.1 M UNet)", "resolution": 64, "steps": 20, "warmup": 3,
             "sample_steps": 20},
    "sd15": {"model": "random:sd1", "label": "SD1.5 UNet (859.5 M), real VAE+TE", "resolution": 256,
             "steps": 3, "warmup": 1, "sample_steps": 2},
    "sdxl": {"model": "random:sdxl", "label": "SDXL UNet (2567 M), real VAE+TE1, TE2 2/32 layers",
             "resolution": 256, "steps": 2, "warmup": 1, "sample_steps": 1},
}
DEFAULT_RUN = {"steps": 1000, "preview_every": 100, "sample_steps": 20, "prompts": 1}
PROMPT = "a photo of a sks shape"


def bench_config(name: str, data: Path, quick: bool = False) -> tuple[dict, dict]:
    """(the model's bench sizes, the full TrainConfig as a dict): defaults + what the benchmark fixes."""
    from trainer.config import TrainConfig, deep_merge

    m = dict(MODELS[name])
    if quick:
        m.update(steps=3, warmup=1, sample_steps=2)
    over = {
        "model": {"base": m["model"]},
        "dataset": {"path": str(data), "resolution": m["resolution"], "batch_size": 1, "enable_buckets": False},
        # one step more than measured: the first step's gap also holds the start previews
        "schedule": {"max_train_steps": m["warmup"] + m["steps"] + 1},
        "precision": {"device": "cpu"},
        "sampling": {"prompts": [PROMPT], "every_n_steps": 0, "at_start": True, "with_base": True,
                     "steps": m["sample_steps"]},
        "saving": {"output_name": f"bench-{name}"},
    }
    return m, deep_merge(TrainConfig().model_dump(mode="json"), over)


def projected_shares(sample_s: float, images: int, sample_steps: int, s_per_step: float, save_s: float,
                     data_per_step: float, startup: float) -> dict:
    """Shares of wall time in a run at the default settings, from this run's unit costs. A preview image
    measured at n < 20 sampling steps gets 20 - n more UNet passes at batch 2 (CFG), each taken as 2/3 of a
    training step (a forward is about a third of forward+backward, at twice the batch)."""
    measured = sample_s / max(1, images)
    per_image = measured + (DEFAULT_RUN["sample_steps"] - sample_steps) * s_per_step * 2 / 3
    steps = DEFAULT_RUN["steps"]
    n_img = DEFAULT_RUN["prompts"] * (2 + (steps - 1) // DEFAULT_RUN["preview_every"] + 1)  # start ×2, every N, end
    total = startup + steps * s_per_step + n_img * per_image + save_s
    return {
        "preview_image_s": per_image, "preview_image_measured_s": measured, "preview_images": n_img,
        "save_s": save_s, "data_per_step_s": data_per_step, "total_s": total,
        "share_sampling": n_img * per_image / total, "share_data": steps * data_per_step / total,
        "share_saving": save_s / total, "share_startup": startup / total,
    }


def shares_of_row(r: dict) -> dict:
    t = r["this_run"]
    return projected_shares(t["share_sampling"] * t["wall_s"], r.get("images_sampled", 3), r["sample_steps_measured"],
                            r["ours_s_per_step"], r["default_run"]["save_s"], r["default_run"]["data_per_step_s"],
                            r["startup_to_started_s"])


def bench_one(name: str, work: Path, threads: int | None, quick: bool, timeout: float) -> dict:
    from trainer.config import from_dict, save_config
    m, cfg_dict = bench_config(name, work / name / "data", quick)
    cfg = from_dict(cfg_dict)
    make_dataset(work / name / "data", 4, m["resolution"])
    run = work / name / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.toml")

    load_before = os.getloadavg()
    floor = measure_floor({"model": m["model"], "network": cfg_dict["network"], "resolution": m["resolution"],
                           "batch": 1, "dtype": "float32", "device": "cpu", "warmup": m["warmup"],
                           "steps": m["steps"]}, threads, timeout, work / name / "floor.json")
    ours = measure_ours(run / "config.toml", run, m["warmup"], threads, timeout, inproc_floor_steps=m["steps"])
    load_after = os.getloadavg()
    shares = projected_shares(ours["timing"]["sample"], ours["images_sampled"], m["sample_steps"],
                              ours["s_per_step"], ours["timing"]["save"], ours["timing"]["data"] / max(1, ours["steps"]),
                              ours["startup_to_started_s"])
    t = ours["timing"]
    wall = ours["wall_s"]
    row = {
        "name": name, "label": m["label"], "model": m["model"], "resolution": m["resolution"], "batch": 1,
        "dtype": ours["dtype"], "rank": cfg.network.rank, "trainable_params": ours["trainable_params"],
        "caching": "latents+text, in memory and on disk",
        "ours_s_per_step": ours["s_per_step"], "floor_s_per_step": floor["s_per_step"],
        "ratio": ours["s_per_step"] / floor["s_per_step"],
        "floor_inproc_s_per_step": ours["inproc_floor_s_per_step"],
        "ratio_inproc": ours["s_per_step"] / ours["inproc_floor_s_per_step"],
        "floor_inproc_step_times": ours["inproc_floor_step_times"],
        "ours_step_times": ours["step_times"], "floor_step_times": floor["step_times"],
        "peak_rss_bytes": ours["peak_rss_bytes"], "floor_peak_rss_bytes": floor["peak_rss_bytes"],
        "startup_to_first_step_s": ours["startup_to_first_step_s"],
        "startup_to_started_s": ours["startup_to_started_s"],
        "cache_s": t["cache"], "sample_steps_measured": m["sample_steps"], "images_sampled": ours["images_sampled"],
        "this_run": {"wall_s": wall, "share_sampling": t["sample"] / wall, "share_data": t["data"] / wall,
                     "share_saving": t["save"] / wall, "share_cache": t["cache"] / wall},
        "default_run": shares,
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
    }
    row["estimate"] = estimate_row(row)
    return row


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    gb = 1e9
    rows = [
        f"# CPU benchmark — {report['date']}",
        "",
        f"Machine: {report['machine']}; torch {report['torch']}, {report['threads']} threads; "
        "fp32, batch 1, LoRA r16/α8 on sd-scripts' default UNet targets, AdamW, caching on. "
        "Random weights (architecture-true configs). Timings on this shared machine vary with load: "
        "the 1-minute load average is given per row (2 cores).",
        "",
        "| model | px | ours s/step | floor s/step (own process / after ours, same process) | ours ÷ floor | peak RSS | est. RSS (err) | est. s/step (err) "
        "| command → 1st step | load before→after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        e = r["estimate"]
        rows.append(
            f"| {r['label']} | {r['resolution']} | {r['ours_s_per_step']:.3f} | {r['floor_s_per_step']:.3f} / "
            f"{_fmt(r.get('floor_inproc_s_per_step'), '.3f')} | {r['ratio']:.2f} / **{_fmt(r.get('ratio_inproc'), '.2f')}** | {r['peak_rss_bytes'] / gb:.2f} GB | {e['peak_memory_bytes'] / gb:.2f} GB "
            f"({e['memory_error']:+.0%}) | {e['seconds_per_step']:.3f} ({e['time_error']:+.0%}) | "
            f"{r['startup_to_first_step_s']:.1f} s | {r['load_avg_before'][0]:.1f}→{r['load_avg_after'][0]:.1f} |")
    rows += ["", "Where the wall time goes in a run at the default settings (1000 steps, a preview every 100 "
             "steps plus base+adapter at step 0 and one at the end = 12 images of 20 sampling steps, one prompt, "
             "one save at the end), projected from this run's measured unit costs:", "",
             "| model | preview image | save | data/step | cache (once) | start-up | previews | data | saving | "
             "start-up | run total |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        d = r["default_run"]
        n = r["sample_steps_measured"]
        scaled = "" if n == 20 else f" ({d.get('preview_image_measured_s', 0):.0f} s at {n} steps + {20 - n} UNet passes)"
        rows.append(
            f"| {r['name']} | {d['preview_image_s']:.2f} s{scaled} | {d['save_s']:.2f} s | "
            f"{d['data_per_step_s'] * 1000:.2f} ms | {r['cache_s']:.1f} s | {r['startup_to_started_s']:.1f} s | "
            f"{d['share_sampling']:.1%} | {d['share_data']:.2%} | {d['share_saving']:.2%} | "
            f"{d['share_startup']:.2%} | {d['total_s'] / 3600:.2f} h |")
    rows += ["", "Notes:",
             "- ours: median wall time between consecutive step events after warm-up (data loading, noise, UNet "
             "forward+backward, min-SNR loss, grad clipping, AdamW, LR schedule, event, control poll); floor: "
             "median of a bare UNet forward+backward with the same LoRA, shapes, dtype and thread count, "
             "measured in its own process just before ours.",
             "- peak RSS is the trainer process's ru_maxrss: it includes the VAE and text encoders, which stay "
             "loaded (for previews) although caching keeps them out of the steps.",
             "- command → 1st step: process launch to the first step event: imports, building the model "
             "(random init here, instead of reading a file), encoding the caches, and the two start previews.",
             "- SDXL's second text encoder keeps 2 of its 32 layers (real width, so real output shapes); with "
             "the text cache on it never runs during steps. Its previews' cost is thus slightly low.",
             "- previews measured at fewer than 20 sampling steps: each missing step is counted as a batch-2 "
             "UNet forward, taken as 2/3 of a training step.",
             "- the two floors: 'own process' is measured in a separate process just before ours (a different "
             "moment of a busy machine: load swings make it unreliable); 'same process' runs right after "
             "training in the trainer's process on its own UNet (same memory state, nearest moment). The bold "
             "ratio uses the latter."]
    for note in report.get("notes", []):
        rows.append(f"- {note}")
    return "\n".join(rows) + "\n"


def run_bench(models=("tiny", "sd15", "sdxl"), out_dir: str | Path = HERE / "results", threads: int | None = 1,
              quick: bool = False, work: str | Path = "/tmp/atelier-bench", timeout: float = 1800,
              notes: list[str] | None = None) -> dict:
    """Run the benchmark for `models`, write cpu.json and cpu.md under out_dir, return the report."""
    import shutil

    import torch

    work = Path(work)
    for name in models:  # fresh datasets: the caches are encoded (and timed) anew
        shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in models:
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        results.append(bench_one(name, work, threads, quick, timeout))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = Path(out_dir)
    if (out / "cpu.json").exists() and not quick:
        # a partial re-run replaces its own rows and keeps the others
        previous = json.loads((out / "cpu.json").read_text())
        kept = [r for r in previous["results"] if r["name"] not in models]
        notes = notes or previous.get("notes", [])
        results = sorted(kept + results, key=lambda r: list(MODELS).index(r["name"]))
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": f"{cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__, "threads": threads or torch.get_num_threads(), "quick": quick,
        "results": results, "notes": notes or [],
    }
    out.mkdir(parents=True, exist_ok=True)
    from trainer.run.atomic import atomic_write_bytes

    atomic_write_bytes(out / "cpu.json", json.dumps(report, indent=1).encode())
    md = markdown(report)
    atomic_write_bytes(out / "cpu.md", md.encode())
    print(md)
    return report


def estimate_row(r: dict) -> dict:
    """trainer/estimate.py's prediction for a measured row, and its error against the measurement."""
    from trainer.config import TrainConfig, deep_merge, from_dict
    from trainer.estimate import estimate

    cfg = from_dict(deep_merge(TrainConfig().model_dump(mode="json"), {
        "model": {"base": r["model"]}, "dataset": {"resolution": r["resolution"], "batch_size": r["batch"]},
        "precision": {"device": "cpu"}}))
    est = estimate(cfg, device="cpu")
    return {"peak_memory_bytes": est["peak_memory_bytes"], "seconds_per_step": est["seconds_per_step"],
            "memory_error": est["peak_memory_bytes"] / r["peak_rss_bytes"] - 1,
            "time_error": est["seconds_per_step"] / r["ours_s_per_step"] - 1,
            "breakdown": est["memory_breakdown"]}


def recheck(out_dir: str | Path = HERE / "results") -> dict:
    """Recompute the estimate columns of a stored cpu.json with today's trainer/estimate.py (no training)."""
    from trainer.run.atomic import atomic_write_bytes

    out = Path(out_dir)
    report = json.loads((out / "cpu.json").read_text())
    for r in report["results"]:
        r["estimate"] = estimate_row(r)
        r["default_run"] = shares_of_row(r)
    atomic_write_bytes(out / "cpu.json", json.dumps(report, indent=1).encode())
    md = markdown(report)
    atomic_write_bytes(out / "cpu.md", md.encode())
    print(md)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,sd15,sdxl", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for cpu.json and cpu.md")
    # one thread: on this shared 2-core machine two OpenMP threads per process fight the other load
    # (a tiny step measured 4.7 s with 2 threads vs 0.16 s with 1 at load 7.6); use 0 for torch's default
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the measured processes (0 = torch default)")
    ap.add_argument("--quick", action="store_true", help="3 steps each (checks the script, not the machine)")
    ap.add_argument("--work", default="/tmp/atelier-bench", help="scratch folder (datasets, run folders)")
    ap.add_argument("--note", action="append", default=[], help="a line added to the report's notes")
    ap.add_argument("--recheck", action="store_true",
                    help="only recompute the estimate columns of <out>/cpu.json (after changing trainer/estimate.py)")
    a = ap.parse_args(argv)
    if a.recheck:
        recheck(a.out)
        return 0
    run_bench([m.strip() for m in a.models.split(",") if m.strip()], a.out, a.threads or None, a.quick, a.work,
              notes=a.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
