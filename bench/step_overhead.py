"""Per-step overhead (not a test): OUR training step against the floor, in ONE process, alternating.

bench/bench_cpu.py times ours and the floor in separate processes or one after the other, so a load swing
on this shared machine lands on one side only. Here one process sets up the real Trainer (the same
config as bench_cpu.py: random architecture-true weights, batch 1, fp32, the default LoRA, caching on) and
then runs N rounds of: k steps through Trainer.train_step (the method the training loop itself calls:
data, noise, UNet forward+backward, min-SNR loss, the ranks' agreement and control poll, grad clipping,
AdamW, LR schedule, step event) and k bare steps of the same UNet with the same LoRA parameters (random
latents/conditioning of the same shapes, MSE, backward, AdamW: bench/harness.py's bare_steps). The order
inside a round alternates, so neither side always runs first. Reported: the median of the per-round
ratios (with k = 1, each compares two neighbouring steps) and the medians over all steps after warm-up.

With --profile, the tiny step is also run under cProfile and the time of every part of the step is
written out (what is forward/backward/optimizer and what is not).

    .venv/bin/python bench/step_overhead.py --label before --profile          # tiny + sd15
    .venv/bin/python bench/step_overhead.py --label after --models tiny
    .venv/bin/python bench/step_overhead.py --label after --models demo --profile  # presets/demo.toml as shipped
Writes <out>/step_overhead.json (rows per label, merged with what is there) and step_overhead.md.
"""
from __future__ import annotations

import argparse
import os

# one OpenMP thread, as bench_cpu.py (2 threads per process on this shared 2-core machine fight the load);
# set before torch is imported. --threads changes torch's count after import.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_cpu import bench_config  # noqa: E402
from harness import bare_steps, make_dataset, write_results  # noqa: E402

# the parts of a step, by (file suffix, function name) as cProfile names them; cumulative seconds
PARTS = [
    ("whole step", "trainer/train/loop.py", "train_step"),
    ("micro-batches (data + loss + backward)", "trainer/train/loop.py", "_accumulate"),
    ("  data: collate", "trainer/data/", "collate"),
    ("  data: sample", "trainer/data/", "sample"),
    ("  loss: noise draw", "trainer/train/loss.py", "draw_noise"),
    ("  loss: scheduler.add_noise", "schedulers/scheduling_ddpm.py", "add_noise"),
    ("  loss: UNet forward", "unets/unet_2d_condition.py", "forward"),
    ("  loss: MSE + min-SNR", "trainer/train/loss.py", "diffusion_loss"),
    ("  backward", "torch/_tensor.py", "backward"),
    ("  isfinite / .item() syncs", "~", "<method 'item' of 'torch._C.TensorBase' objects>"),
    ("agreement (single process: a set union)", "trainer/train/processes.py", "agree"),
    ("control poll (control/ folder listing)", "trainer/run/events.py", "poll"),
    ("optimizer step (all of it)", "trainer/train/loop.py", "_optimizer_step"),
    ("  grad clipping", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
    ("  AdamW", "torch/optim/adam", "step"),
    ("  LR schedule", "torch/optim/lr_scheduler.py", "step"),
    ("  zero_grad", "torch/optim/optimizer.py", "zero_grad"),
    ("step report", "trainer/train/loop.py", "_report_step"),
    ("  event write", "trainer/run/events.py", "emit"),
    ("  TensorBoard + progress bar", "trainer/train/timing.py", "update"),
    ("crash point", "trainer/run/faults.py", "crash_point"),
]


def make_trainer(name: str, work: Path):
    """The real Trainer for bench model `name`, set up (model, adapter, caches, optimizer, step-0 previews)
    as a run does."""
    from trainer.config import deep_merge, from_dict

    if name == "demo":
        m, cfg = demo_config()
    else:
        m, cfg_dict = bench_config(name, work / "data")
        make_dataset(work / "data", 4, m["resolution"])
        cfg = from_dict(deep_merge(cfg_dict, {"schedule": {"max_train_steps": 100_000}}))
    # every latent encoded in the set-up, as before caching on first use: the rounds time steps, not encodings
    cfg.dataset.cache_on_first_use = False
    trainer, setup_s = set_up_trainer(cfg, work / "run")
    return m, cfg, trainer, setup_s


def set_up_trainer(cfg, run_dir: Path):
    """(the real Trainer for cfg, set up as a run does before its first step; the seconds that took)."""
    from trainer.train.loop import Trainer
    from trainer.train.timing import StepDisplay

    trainer = Trainer(cfg, run_dir, quiet=True)
    t0 = time.perf_counter()
    trainer._set_up()  # what Trainer._run does before the first step
    trainer.display = StepDisplay(trainer.paths.root, cfg.schedule.max_train_steps, 0, terminal=False)
    # a run draws its step-0 previews before the first step: whatever they leave behind (pipeline state,
    # memory) is there for the steps measured here too
    trainer.previews.at_start(0)
    return trainer, time.perf_counter() - t0


def demo_config():
    """The demo as it ships (presets/demo.toml: builtin:shapes, 64 px, batch 8 with regularisation images,
    rank 8, its previews at step 0), on CPU, with room for the rounds."""
    from trainer.config import load_preset

    repo = HERE.parent
    cfg = load_preset(str(repo / "presets" / "demo.toml"), [
        f"dataset.path={repo / 'datasets' / 'zkq-stripes'}", f"dataset.reg_path={repo / 'datasets' / 'shapes-reg'}",
        "schedule.max_train_steps=100000", "precision.device=cpu"])
    m = {"model": cfg.model.base, "label": "demo base builtin:shapes (batch 8, rank 8, reg images)",
         "resolution": cfg.dataset.resolution}
    return m, cfg


def ours_steps(trainer, batches, k: int) -> list[float]:
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        if trainer.train_step(batches) is None:
            raise RuntimeError("the loss was not finite")
        times.append(time.perf_counter() - t0)
    return times


def floor_runner(m: dict, cfg, trainer):
    """k bare forward+backward+AdamW steps on the trainer's own UNet and LoRA parameters."""
    import torch

    params = list(trainer.network.all_params())
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    base = trainer.base
    # the shapes of the trainer's own batches: its batch size, the base's latent size and caption length
    spec = {"model": m["model"], "resolution": m["resolution"], "batch": cfg.dataset.batch_size, "warmup": 0,
            "latent_factor": 2 ** (len(base.vae.config.block_out_channels) - 1),
            "latent_channels": base.unet.config.in_channels, "tokens": base.tokenizers[0].model_max_length}

    def run(k: int) -> list[float]:
        return bare_steps(trainer.base.unet, trainer.base.family, {**spec, "steps": k}, "cpu", trainer.dtype,
                          params, optimizer=optimizer)
    return run


def measure(name: str, rounds: int, k: int, warmup: int, work: Path) -> tuple[dict, object]:
    load_before = os.getloadavg()[0]
    m, cfg, trainer, setup_s = make_trainer(name, work)
    batches = trainer.batch_stream()
    floor = floor_runner(m, cfg, trainer)
    ours_steps(trainer, batches, warmup)
    floor(warmup)
    ours, bare, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            o = ours_steps(trainer, batches, k)
            f = floor(k)
        else:
            f = floor(k)
            o = ours_steps(trainer, batches, k)
        ours += o
        bare += f
        ratios.append(statistics.median(o) / statistics.median(f))
    row = {
        "model": m["model"], "label": m["label"], "resolution": m["resolution"], "batch": cfg.dataset.batch_size,
        "rank": cfg.network.rank, "threads": _threads(), "rounds": rounds, "k": k, "warmup": warmup,
        "setup_s": round(setup_s, 2),
        "ours_s_per_step": statistics.median(ours), "floor_s_per_step": statistics.median(bare),
        "ratio": statistics.median(ours) / statistics.median(bare),
        "ratio_median_of_rounds": statistics.median(ratios),
        "round_ratios": [round(x, 3) for x in ratios],
        "ours_step_times": [round(x, 4) for x in ours], "floor_step_times": [round(x, 4) for x in bare],
        "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
    }
    return row, (trainer, batches, floor)


def profile(trainer, batches, floor, steps: int) -> dict:
    """cProfile of `steps` of our steps and as many floor steps: seconds per step of each part."""
    prof = cProfile.Profile()
    prof.enable()
    ours_steps(trainer, batches, steps)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    parts = []
    for title, file_part, func in PARTS:
        hits = [(v[3], v[1]) for (f, _, fn), v in stats.items() if fn == func and file_part in f.replace("\\", "/")]
        if not hits:
            continue
        # a function that calls itself (forward of nested modules) must not be counted twice: the largest
        # cumulative entry already holds the nested calls
        cum = max(h[0] for h in hits) if func == "forward" else sum(h[0] for h in hits)
        parts.append({"part": title, "ms_per_step": round(1000 * cum / steps, 3),
                      "calls_per_step": round(sum(h[1] for h in hits) / steps, 1)})
    fprof = cProfile.Profile()
    fprof.enable()
    floor(steps)
    fprof.disable()
    ftotal = sum(v[2] for v in pstats.Stats(fprof).stats.values())
    top = sorted(((v[2], f"{Path(f).name}:{fn}") for (f, _, fn), v in stats.items()), reverse=True)[:15]
    return {"steps": steps, "parts": parts, "floor_ms_per_step_profiled": round(1000 * ftotal / steps, 3),
            "top_self_ms_per_step": [{"func": n, "ms": round(1000 * t / steps, 3)} for t, n in top]}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def git_head() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True, text=True)
    return r.stdout.strip()


def markdown(report: dict) -> str:
    out = ["# Per-step overhead: ours vs the floor, one process, alternating", "",
           "Each row: one process sets up the real Trainer (bench_cpu.py's config: random architecture-true "
           "weights, batch 1, fp32, LoRA r16/α8 on the default targets, AdamW, caching on), then alternates "
           "rounds of k steps of `Trainer.train_step` (the loop's own step) with k bare forward+backward+AdamW "
           "steps of the same UNet and LoRA parameters (bench/harness.py `bare_steps`), order swapped every "
           "round. 1 OpenMP thread. Load: the 1-minute load average before→after (2 cores, shared with a test "
           "suite and other jobs).", "",
           "| label | commit | model | px | rounds×k | ours s/step | floor s/step | ours ÷ floor (median of round "
           "ratios) | ratio of the medians | load 1 min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in report["rows"].items():
        for r in rows.values():
            out.append(f"| {label} | {r.get('commit', '')} | {r['label']} | {r['resolution']} | {r['rounds']}×{r['k']} | "
                       f"{r['ours_s_per_step']:.4f} | {r['floor_s_per_step']:.4f} | **{r['ratio_median_of_rounds']:.3f}** | "
                       f"{r['ratio']:.3f} | {r['load_1min_before']:.1f}→{r['load_1min_after']:.1f} |")
    for label, prof in report.get("profiles", {}).items():
        model = "demo-base" if label.endswith("demo base") else "tiny"
        out += ["", f"## Profile of the {model} step ({label}, cProfile, {prof['steps']} steps)", "",
                "cProfile's own cost inflates Python-heavy parts (the tiny UNet's forward most); read the parts "
                "beyond forward/backward/AdamW as absolute milliseconds. The floor's step under the same "
                f"profiler: {prof['floor_ms_per_step_profiled']:.1f} ms.", "",
                "| part | ms / step | calls / step |", "|---|---|---|"]
        out += [f"| {p['part']} | {p['ms_per_step']:.2f} | {p['calls_per_step']:g} |" for p in prof["parts"]]
        out += ["", "Top self time: " + ", ".join(f"{t['func']} {t['ms']:.1f} ms" for t in prof["top_self_ms_per_step"][:10])]
    if report.get("notes"):
        out += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15", "sdxl", "demo"])
    ap.add_argument("--label", default="current")
    ap.add_argument("--rounds", type=int, default=0, help="0: 30 for tiny, 4 for the real UNets")
    ap.add_argument("--k", type=int, default=1, help="steps per side per round (1: each ratio compares two "
                    "neighbouring steps, the closest moments of a machine whose load swings)")
    ap.add_argument("--profile", action="store_true", help="also profile the tiny step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    path = out / "step_overhead.json"
    report = json.loads(path.read_text()) if path.exists() else {"rows": {}, "profiles": {}, "notes": []}
    commit = git_head()
    for name in a.models:
        tiny = name == "tiny"
        with tempfile.TemporaryDirectory(prefix=f"step-overhead-{name}-") as tmp:
            small = tiny or name == "demo"
            row, live = measure(name, a.rounds or (30 if small else 4), a.k, 2 if small else 1,
                                Path(tmp))
            row["commit"] = commit
            report["rows"].setdefault(a.label, {})[name] = row
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("step_times")}), flush=True)
            if a.profile and small:
                key = a.label if tiny else f"{a.label}, demo base"
                report["profiles"][key] = profile(*live, steps=30)
            del live
    write_results(out, "step_overhead", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
