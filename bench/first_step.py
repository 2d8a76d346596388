"""Time to step 1 and peak memory, caching on first use vs up front (not a test).

Each run is our trainer in a child process (bench/harness.py `measure_ours`: the real `Trainer.run`), a
few steps, no previews (as the floor and the diffusers example have none), the caches in memory only (a
fresh encode every run). The two modes alternate, `--rounds` times each, on the same machine state:
  first use  dataset.cache_on_first_use = true (the default): step 1 encodes only its own batch
  up front   dataset.cache_on_first_use = false: every latent and caption before step 1 (as before)
Reported per run: seconds from the launch to step 1, the process's peak RSS (getrusage) and the peaks of
its phases (the trainer's `memory` events: model load, caching, training); and the floor's peak RSS (the
same UNet and LoRA alone, bare forward+backward steps, in its own process: harness `measure_floor`).

    .venv/bin/python bench/first_step.py --models demo sd15 --rounds 2
Writes <out>/first_step.json (runs per label, merged with what is there) and first_step.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_cpu import bench_config  # noqa: E402
from harness import make_dataset, measure_floor, measure_ours, read_events, write_results  # noqa: E402
from step_overhead import demo_config, git_head  # noqa: E402

MODES = {"first use": True, "up front": False}
STEPS = {"demo": 3, "tiny": 3, "sd15": 2}
GIB = 2**30


def run_config(name: str, work: Path, first_use: bool):
    """(bench sizes, TrainConfig) of `name` ("demo": presets/demo.toml as shipped; else bench_cpu.py's)."""
    from trainer.config import deep_merge, from_dict

    over = {"schedule": {"max_train_steps": STEPS[name]}, "sampling": {"prompts": [], "at_start": False,
                                                                       "every_n_steps": 0},
            "dataset": {"cache_on_first_use": first_use, "cache_to_disk": False},
            "saving": {"every_n_steps": 0}, "validation": {"split": 0.0}, "precision": {"device": "cpu"}}
    if name == "demo":
        m, base = demo_config()
        m = {**m, "label": "demo (builtin:shapes, 64 px, batch 8, 16 images + 16 reg)",
             "batch": base.dataset.batch_size, "warmup": 0}
        return m, from_dict(deep_merge(base.model_dump(mode="json"), over))
    m, cfg_dict = bench_config(name, work / "data")
    if not (work / "data").exists():
        make_dataset(work / "data", 4, m["resolution"])
    return {**m, "batch": 1}, from_dict(deep_merge(cfg_dict, over))


def floor_spec(name: str, m: dict, cfg) -> dict:
    spec = {"model": m["model"], "network": cfg.network.model_dump(mode="json"), "resolution": m["resolution"],
            "batch": m["batch"], "dtype": "float32", "device": "cpu", "warmup": 1, "steps": 2}
    if name == "demo":  # the shapes base: 3 VAE blocks (a factor of 4), 4 latent channels, 77 tokens
        spec.update(latent_factor=4, latent_channels=4, tokens=77)
    return spec


def one_run(name: str, work: Path, mode: str, threads: int, timeout: float) -> dict:
    from trainer.config import save_config

    m, cfg = run_config(name, work, MODES[mode])
    run = Path(tempfile.mkdtemp(prefix=f"first-step-{name}-", dir=work))
    save_config(cfg, run / "config.toml")
    load = os.getloadavg()[0]
    ours = measure_ours(run / "config.toml", run, 0, threads, timeout)
    ev = read_events(run)
    finished = next(e for e in ev if e["type"] == "finished")
    started = next(e for e in ev if e["type"] == "started")
    steps = [e for e in ev if e["type"] == "step"]
    return {"mode": mode, "label": m["label"], "launch_to_step1_s": ours["startup_to_first_step_s"],
            "launch_to_started_s": ours["startup_to_started_s"], "started_to_step1_s":
            round(steps[0]["time"] - started["time"], 2), "s_per_step_after_1": ours["s_per_step"],
            "peak_rss_bytes": ours["peak_rss_bytes"], "phases": finished.get("memory", {}),
            "load_1min": round(load, 2)}


def markdown(report: dict) -> str:
    out = ["# Time to step 1 and peak memory: caching on first use vs up front", "",
           "bench/first_step.py: our trainer in a child process, previews off, caches in memory only (each run "
           "encodes afresh), the two modes alternating; 1 OpenMP thread; the machine is shared (2 cores), the "
           "1-minute load average is beside each run. Peak RSS: the whole process (getrusage) and its phases "
           "(the trainer's `memory` events; each phase's own high-water mark, /proc/self/clear_refs). Floor: "
           "the same UNet and LoRA alone, bare forward+backward steps, in a process of its own.", ""]
    for label, models in report["runs"].items():
        for name, r in models.items():
            out += [f"## {r['runs'][0]['label']} — {label} ({r['commit']})", "",
                    "| mode | launch → step 1 s | launch → started s | started → step 1 s | peak RSS GiB | "
                    "model load GiB | caching GiB | training GiB | load 1 min |", "|---|---|---|---|---|---|---|---|---|"]
            for x in r["runs"]:
                ph = {k: v.get("peak_rss_mib", float("nan")) / 1024 for k, v in x["phases"].items()}
                out.append(f"| {x['mode']} | {x['launch_to_step1_s']:.2f} | {x['launch_to_started_s']:.2f} | "
                           f"{x['started_to_step1_s']:.2f} | {x['peak_rss_bytes'] / GIB:.3f} | "
                           f"{ph.get('model load', float('nan')):.3f} | {ph.get('caching', float('nan')):.3f} | "
                           f"{ph.get('training', float('nan')):.3f} | {x['load_1min']:.1f} |")
            med = {mode: statistics.median(x["launch_to_step1_s"] for x in r["runs"] if x["mode"] == mode)
                   for mode in MODES if any(x["mode"] == mode for x in r["runs"])}
            out += ["", "Median launch → step 1: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
                    + f". Floor peak RSS: {r['floor_peak_rss_bytes'] / GIB:.3f} GiB.", ""]
    if report.get("notes"):
        out += ["Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["demo"], choices=["demo", "tiny", "sd15"])
    ap.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating")
    ap.add_argument("--up-front-first", action="store_true", help="start each model with the up-front run")
    ap.add_argument("--label", default="current")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    commit = git_head()
    out = Path(a.out)
    path = out / "first_step.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}, "notes": []}
    for name in a.models:
        with tempfile.TemporaryDirectory(prefix=f"first-step-{name}-") as tmp:
            work = Path(tmp)
            runs = []
            order = list(MODES)[::-1] if a.up_front_first else list(MODES)
            for r in range(a.rounds):
                for mode in (order if r % 2 == 0 else order[::-1]):
                    runs.append(one_run(name, work, mode, a.threads, a.timeout))
                    print(json.dumps({"model": name, **runs[-1]}), flush=True)
            m, cfg = run_config(name, work, True)
            floor = measure_floor(floor_spec(name, m, cfg), a.threads, a.timeout, work / "floor.json")
        earlier = report["runs"].get(a.label, {}).get(name, {}).get("runs", [])  # a later call adds rounds
        report["runs"].setdefault(a.label, {})[name] = {"commit": commit, "runs": earlier + runs,
                                                         "floor_peak_rss_bytes": floor["peak_rss_bytes"]}
    write_results(out, "first_step", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
