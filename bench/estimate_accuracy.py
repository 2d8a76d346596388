"""How close the studio's pre-launch estimate comes to the real run, on this machine, now.

    .venv/bin/python bench/estimate_accuracy.py                 # measure every row, then fit and report
    .venv/bin/python bench/estimate_accuracy.py --rows tiny-64  # some rows only (kept rows are not lost)
    .venv/bin/python bench/estimate_accuracy.py --report        # report again from the saved measurements

Each row: `python -m trainer calibrate` (the few seconds of measurement the studio makes), then the real
trainer in a child process (bench/harness.py), whose finished event reports the seconds spent stepping,
drawing previews, encoding the cache and saving. The estimate is computed from the config, the image
count and that calibration, as the studio does. Rows marked "fit" set trainer/estimate.py's work
constants (`--fit` prints them); "held-out" rows never do, so their errors are the estimate's real error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from harness import child_env, make_dataset, measure_ours  # noqa: E402

PARTS = [("train_seconds", "steps"), ("preview_seconds", "sample"), ("cache_seconds", "cache"),
         ("save_seconds", "save")]


def _sampling(prompts: int, every: int, steps: int, at_start: bool = True) -> dict:
    return {"prompts": [f"a sks shape, view {i}" for i in range(prompts)], "every_n_steps": every,
            "at_start": at_start, "with_base": True, "steps": steps}


# name: (role, images, config overrides)
ROWS: dict[str, tuple[str, int, dict]] = {
    "tiny-64": ("fit", 8, {"model": {"base": "tiny:sd1"}, "dataset": {"resolution": 64, "batch_size": 1},
                           "schedule": {"max_train_steps": 40}, "sampling": _sampling(2, 20, 10)}),
    "sd15-256": ("fit", 4, {"model": {"base": "random:sd1"}, "dataset": {"resolution": 256, "batch_size": 1},
                            "schedule": {"max_train_steps": 5}, "sampling": _sampling(1, 0, 3)}),
    "tiny-128-b2": ("fit", 12, {"model": {"base": "tiny:sd1"},
                                     "dataset": {"resolution": 128, "batch_size": 2},
                                     "schedule": {"max_train_steps": 30}, "sampling": _sampling(3, 10, 8),
                                     "saving": {"every_n_steps": 10}}),
    "tiny-96-b3": ("held-out", 9, {"model": {"base": "tiny:sd1"}, "dataset": {"resolution": 96, "batch_size": 3},
                                   "schedule": {"max_train_steps": 20}, "sampling": _sampling(2, 10, 6)}),
    "sd15-320": ("held-out", 4, {"model": {"base": "random:sd1"}, "dataset": {"resolution": 320, "batch_size": 1},
                                 "schedule": {"max_train_steps": 4}, "sampling": _sampling(1, 0, 2, at_start=False)}),
    "demo": ("fit", 0, {"preset": "demo", "schedule": {"max_train_steps": 60},
                             "sampling": {"every_n_steps": 30, "steps": 10}}),
}


def row_config(name: str, work: Path):
    """(TrainConfig, number of training images) of a row, its dataset generated in `work`."""
    from trainer.config import TrainConfig, deep_merge, from_dict, load_preset

    role, images, over = ROWS[name]
    over = json.loads(json.dumps(over))
    preset = over.pop("preset", None)
    base = load_preset(preset).model_dump(mode="json") if preset else TrainConfig().model_dump(mode="json")
    if not preset:
        data = make_dataset(work / name / "data", images, over["dataset"]["resolution"])
        over["dataset"].update(path=str(data), enable_buckets=False)
        over.setdefault("precision", {})["device"] = "cpu"
    over.setdefault("saving", {})["output_name"] = f"bench-{name}"
    cfg = from_dict(deep_merge(base, over))
    if preset:
        from trainer.data.scan import list_dataset

        images = len(list_dataset(Path(cfg.dataset.path)).items)
    return cfg, images


def calibrate(threads: int | None) -> dict:
    out = subprocess.run([sys.executable, "-m", "trainer", "calibrate"], cwd=REPO, env=child_env(threads),
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_row(name: str, work: Path, threads: int | None) -> dict:
    from trainer.config import save_config

    cfg, images = row_config(name, work)
    run = work / name / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time: a finished one would not train again
    run.mkdir(parents=True)
    save_config(cfg, run / "config.toml")
    speed = calibrate(threads)
    load_before = os.getloadavg()[0]
    ours = measure_ours(run / "config.toml", run, warmup=1, threads=threads, timeout=3600)
    return {"name": name, "role": ROWS[name][0], "images": images, "config": cfg.model_dump(mode="json"),
            "speed": speed, "speed_after": calibrate(threads), "threads": threads, "timing": ours["timing"], "steps": ours["steps"],
            "s_per_step": ours["s_per_step"], "wall_s": ours["wall_s"], "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def estimate_of(row: dict) -> dict:
    from trainer.config import from_dict
    from trainer.estimate import estimate

    return estimate(from_dict(row["config"]), num_images=row["images"], device="cpu", speed=row["speed"])


def fit(rows: list[dict]) -> dict:
    """Work constants from the fit rows: a step's measured seconds × the GFLOP/s measured beside it is its work,
    CPU_STEP_FIXED_GFLOP + batch × (latent_px × CPU_GFLOP_PER_LATENT_PX + latent_px² × the family's attention
    scores × CPU_GFLOP_PER_ATTN_SCORE). The two tiny rows (batch 1 at 64 px, batch 2 at 128 px) give the fixed
    part and tiny's per-pixel constant; then each other family's row its own per-pixel constant. The attention
    constant is kept as trainer/estimate.py has it: at the tiny model's 8×8 and 16×16 latents its scores are
    too few to separate from the rest (it was fitted when the tiny VAE downsampled by 2, 32×32 latents)."""
    from trainer.config import from_dict
    from trainer.estimate import ATTN_SCORES_PER_LATENT_PX2, CPU_GFLOP_PER_ATTN_SCORE, VAE_DOWNSCALE, family_of, work_key

    points: dict[str, list[tuple[int, float, float, float]]] = {}  # family: (batch, latent_px, attention, work)
    out: dict = {}
    for r in rows:
        if ROWS[r["name"]][0] != "fit":
            continue
        cfg = from_dict(r["config"])
        fam, ds = work_key(cfg, family_of(cfg)), cfg.dataset
        g = r["speed"]["gflops"]
        px = (ds.resolution // VAE_DOWNSCALE.get(fam, 8)) ** 2
        attention = px ** 2 * ATTN_SCORES_PER_LATENT_PX2[fam] * CPU_GFLOP_PER_ATTN_SCORE
        points.setdefault(fam, []).append((ds.batch_size, px, attention, r["s_per_step"] * g))
        if r["timing"].get("cache"):
            out.setdefault("CPU_CACHE_GFLOP_PER_IMAGE_PX", {})[fam] = r["timing"]["cache"] * g / (r["images"] * ds.resolution ** 2)
    # work = fixed + b·px·c + b·attention: two tiny rows, two unknowns (fixed, c)
    (b1, p1, a1, w1), (b2, p2, a2, w2) = points["tiny"][:2]
    c = ((w2 - b2 * a2) - (w1 - b1 * a1)) / (b2 * p2 - b1 * p1)
    fixed = (w1 - b1 * a1) - b1 * p1 * c
    out["CPU_STEP_FIXED_GFLOP"] = fixed
    for fam, pts in points.items():
        b, px, attention, work = pts[0]
        out.setdefault("CPU_GFLOP_PER_LATENT_PX", {})[fam] = c if fam == "tiny" else ((work - fixed) / b - attention) / px
    return out


def _err(est: float, actual: float) -> str:
    if actual < 0.05 and est < 0.05:
        return "–"
    return f"{(est - actual) / actual:+.0%}" if actual else "∞"


def report(rows: list[dict]) -> str:
    lines = ["# Pre-launch estimate vs the real run", "",
             "`python bench/estimate_accuracy.py`: for each row, `python -m trainer calibrate` (what the studio "
             "measures), then the real trainer in a child process; the estimate is trainer/estimate.py's, from "
             "the config, the image count and that calibration. \"fit\" rows set the work constants; "
             "\"held-out\" rows did not, so their errors are the estimate's real errors. Seconds: stepping / "
             "previews / encoding the cache / saving, as the trainer's finished event reports them.", "",
             "| row | role | GFLOP/s (before→after) | load | steps est / real | previews est / real | cache est / real "
             "| saves est / real | total est / real | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = estimate_of(r)
        t = r["timing"]
        cells = [f"{e[k]:.1f} / {t.get(a, 0):.1f}" for k, a in PARTS]
        est_total = sum(e[k] for k, _ in PARTS)
        real_total = sum(t.get(a, 0) for _, a in PARTS)
        lines.append(f"| {r['name']} | {ROWS[r['name']][0]} | {r['speed']['gflops']:.1f}→{r['speed_after']['gflops']:.1f} | "
                     f"{r['load_before']}→{r['load_after']} | " + " | ".join(cells) +
                     f" | {est_total:.1f} / {real_total:.1f} | {_err(est_total, real_total)} |")
    lines += preview_shares(rows)
    lines += ["", f"Measured {rows[0]['when'] if rows else '–'} onwards on this project's 2-core machine, shared "
              "with other jobs (the load column); the calibration before and after each run shows how much the "
              "machine's speed moved meanwhile, which no pre-launch estimate can know."]
    return "\n".join(lines) + "\n"


SHARE_PRESETS = ("demo", "tiny-test", "sd15-anime", "sd15-realistic", "sd15-realistic-8gb", "sd15-anime-8gb", "illustrious-xl", "pony-v6-12gb")


def preview_shares(rows: list[dict]) -> list[str]:
    """The previews' share of a whole run at each preset's own settings (30 images), by the estimate with
    these rows' constants at the SD1.5 row's calibration: now, and as it was when step 0 drew the adapter
    beside the base although they were equal (one more round)."""
    from trainer.config import load_preset
    from trainer.estimate import estimate
    from trainer.train.preview_styles import preview_plan

    sd15 = next((r for r in rows if r["name"] == "sd15-256"), None)
    if sd15 is None:
        return []
    speed = sd15["speed"]
    out = ["", f"Previews' share of a run at each preset's own settings (30 images; estimate at "
           f"{speed['gflops']:.1f} GFLOP/s, the sd15-256 row's calibration; \"before\": step 0 also drew the "
           "adapter while it equalled the base):", "",
           "| preset | px | steps | preview images | s per preview image | share now | before |", "|---|---|---|---|---|---|---|"]
    for name in SHARE_PRESETS:
        cfg = load_preset(name)
        e = estimate(cfg, num_images=30, device="cpu", speed=speed)
        if not e["previews"]:
            continue
        per = e["preview_seconds"] / e["previews"]
        extra = len(preview_plan(cfg).prompts) * per if cfg.sampling.at_start else 0.0
        before = (e["preview_seconds"] + extra) / (e["total_seconds"] + extra)
        out.append(f"| {name} | {cfg.dataset.resolution} | {e['steps']} | {e['previews']} | {per:.0f} | "
                   f"{e['preview_seconds'] / e['total_seconds']:.1%} | {before:.1%} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for estimate_accuracy.json / .md")
    ap.add_argument("--work", default="/tmp/atelier-estimate-bench")
    ap.add_argument("--threads", type=int, default=1,
                    help="OpenMP threads of the calibration and the run alike (0 = torch's default); on a shared "
                         "machine 1 keeps a busy neighbour from stalling every step")
    ap.add_argument("--report", action="store_true", help="no measuring: report the saved rows")
    ap.add_argument("--fit", action="store_true", help="print the work constants the fit rows give")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "estimate_accuracy.json"
    rows = {r["name"]: r for r in (json.loads(saved.read_text()) if saved.exists() else [])}
    if not a.report and not a.fit:
        for name in a.rows.split(","):
            print(f"[bench] {name} …", flush=True)
            rows[name] = measure_row(name, Path(a.work), a.threads or None)
            saved.write_text(json.dumps([rows[n] for n in ROWS if n in rows], indent=1))
    ordered = [rows[n] for n in ROWS if n in rows]
    if a.fit:
        print(json.dumps(fit(ordered), indent=1))
        return 0
    (out / "estimate_accuracy.md").write_text(report(ordered))
    print(report(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
