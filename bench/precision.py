"""CPU precision and torch.compile (issue #19), not a test: our step in fp32, bf16 and compiled, against the
eager fp32 floor, in ONE process, alternating.

For each model one process sets up three real Trainers (the same config but for precision): fp32
(mixed_precision "no"), bf16 (mixed_precision "bf16" with cpu_bf16 "on": native where the CPU has
AVX512-BF16/AMX, emulated elsewhere) and compiled (fp32 with precision.compile; its first step holds the
compile, reported apart as the warm-up). Then N rounds, each running one `Trainer.train_step` of every
mode and one bare eager fp32 forward+backward+AdamW step of the fp32 trainer's UNet and LoRA parameters
(bench/harness.py `bare_steps`: the floor), in an order rotated every round so no side always runs
first. Reported per mode: the median step, and the median over rounds of (its step ÷ that round's floor
step). The CPU's flags and the load are recorded: on a CPU without native bf16 the bf16 row measures the
emulation, not what bf16 does where it is native.

    .venv/bin/python bench/precision.py                       # tiny + demo base
    .venv/bin/python bench/precision.py --models sd15 --modes fp32 bf16 --rounds 3
Writes <out>/precision.json (rows per model, merged with what is there) and precision.md.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as bench_cpu.py and step_overhead.py; before torch loads
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_cpu import bench_config  # noqa: E402
from harness import bare_steps, make_dataset, write_results  # noqa: E402
from step_overhead import git_head, ours_steps, set_up_trainer  # noqa: E402

MODES = {"fp32": {"mixed_precision": "no"}, "bf16": {"mixed_precision": "bf16", "cpu_bf16": "on"},
         "compile": {"mixed_precision": "no", "compile": True}}
LABELS = {"tiny": "tiny SD1 (1.1 M UNet), 64 px, batch 1", "demo": "demo base builtin:shapes (4.19 M UNet), "
          "64 px, batch 8 (presets/demo.toml)", "sd15": "SD1.5 UNet (859.5 M, random), 256 px, batch 1"}


def model_config(name: str, work: Path) -> tuple[dict, dict]:
    """(what the floor needs: model, resolution, batch, latent factor; the TrainConfig as a dict)."""
    from trainer.config import deep_merge, load_preset

    off = {"sampling": {"every_n_steps": 0, "at_start": False}, "schedule": {"max_train_steps": 100_000},
           "validation": {"split": 0.0}, "saving": {"every_n_steps": 0}}
    if name == "demo":
        cfg = load_preset("demo").model_dump(mode="json")
        root = HERE.parent / "datasets"
        cfg = deep_merge(cfg, {"dataset": {"path": str(root / "zkq-stripes"), "reg_path": str(root / "shapes-reg")},
                               **off})
        ds = cfg["dataset"]
        # the demo VAE halves twice (64 px → 16×16 latents)
        return {"model": "builtin:shapes", "resolution": ds["resolution"], "batch": ds["batch_size"],
                "latent_factor": 4}, cfg
    m, cfg = bench_config(name, work / "data")
    make_dataset(work / "data", 4, m["resolution"])
    return {"model": m["model"], "resolution": m["resolution"], "batch": 1}, deep_merge(cfg, off)


def measure(name: str, modes: list[str], rounds: int, work: Path) -> dict:
    import torch

    from trainer.config import deep_merge, from_dict

    load_before = os.getloadavg()[0]
    spec, cfg = model_config(name, work)
    trainers, setup_s, first_step_s, batches = {}, {}, {}, {}
    for mode in modes:
        t, setup_s[mode] = set_up_trainer(from_dict(deep_merge(cfg, {"precision": MODES[mode]})), work / mode)
        trainers[mode], batches[mode] = t, t.batch_stream()
        # the first step: page-in for all, the whole torch.compile for the compiled one
        first_step_s[mode] = ours_steps(t, batches[mode], 1)[0]
    plain = trainers["fp32"] if "fp32" in trainers else next(iter(trainers.values()))
    params = list(plain.network.all_params())
    optimizer = torch.optim.AdamW(params, lr=plain.cfg.optimizer.lr, weight_decay=plain.cfg.optimizer.weight_decay)

    def floor() -> float:
        return bare_steps(plain.base.unet, plain.base.family, {**spec, "warmup": 0, "steps": 1}, "cpu",
                          torch.float32, params, optimizer=optimizer)[0]

    floor()  # warm-up, as every mode had its first step
    sides = [*modes, "floor"]
    times = {s: [] for s in sides}
    ratios = {m: [] for m in modes}
    for r in range(rounds):
        this = {}
        for s in sides[r % len(sides):] + sides[:r % len(sides)]:
            this[s] = floor() if s == "floor" else ours_steps(trainers[s], batches[s], 1)[0]
            times[s].append(this[s])
        for m in modes:
            ratios[m].append(this[m] / this["floor"])
    med = {s: statistics.median(v) for s, v in times.items()}
    return {
        "model": name, "label": LABELS[name], "rounds": rounds, "threads": torch.get_num_threads(),
        "floor_s_per_step": med["floor"],
        "modes": {m: {"dtype": str(trainers[m].dtype).replace("torch.", ""), "setup_s": round(setup_s[m], 2),
                      "first_step_s": round(first_step_s[m], 3), "s_per_step": med[m],
                      "ratio_to_floor": statistics.median(ratios[m]),
                      "round_ratios": [round(x, 3) for x in ratios[m]],
                      "step_times": [round(x, 4) for x in times[m]]} for m in modes},
        "floor_step_times": [round(x, 4) for x in times["floor"]],
        "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
    }


def machine() -> dict:
    import torch

    from trainer.train.device import CPU_BF16_FLAGS, system_cpu_flags
    from trainer.train.setup import cpu_has_native_bf16

    flags = system_cpu_flags()
    model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512f": "avx512f" in flags, "bf16_flags": sorted(f for f in CPU_BF16_FLAGS if f in flags),
            "native_bf16": cpu_has_native_bf16()}


def markdown(report: dict) -> str:
    out = ["# CPU precision and torch.compile: our step ÷ the eager fp32 floor, one process, alternating", "",
           "bench/precision.py: per model one process sets up three real Trainers (fp32; bf16 = mixed_precision "
           "bf16 with cpu_bf16 on; compile = fp32 with precision.compile) and runs rounds of one "
           "`Trainer.train_step` of each plus one bare eager fp32 forward+backward+AdamW step of the same UNet "
           "and LoRA (bench/harness.py `bare_steps`), order rotated every round. Ratio: median over rounds of "
           "the mode's step ÷ that round's floor step. First step: page-in, and for compile the whole "
           "torch.compile (the warm-up a run shows as the 'compiling' phase). 1 OpenMP thread.", ""]
    for key, m in report.get("machines", {}).items():
        native = "**native bf16**" if m["native_bf16"] else "**no native bf16** (bf16 is emulated: its row is not what a native-bf16 CPU does)"
        out.append(f"- machine `{key}`: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_cpu_capability']}), "
                   f"bf16 flags {m['bf16_flags'] or 'none'}: {native}")
    out += ["", "| model | commit | machine | mode | dtype | s/step | ÷ eager fp32 floor | first step s | set-up s "
            "| floor s/step | rounds | load 1 min |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"].values():
        for mode, v in r["modes"].items():
            out.append(f"| {r['label']} | {r.get('commit', '')} | {r.get('machine', '')} | {mode} | {v['dtype']} | "
                       f"{v['s_per_step']:.4f} | **{v['ratio_to_floor']:.3f}** | {v['first_step_s']:.1f} | "
                       f"{v['setup_s']:.1f} | {r['floor_s_per_step']:.4f} | {r['rounds']} | "
                       f"{r['load_1min_before']:.1f}→{r['load_1min_after']:.1f} |")
    if report.get("notes"):
        out += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "demo"], choices=list(LABELS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--rounds", type=int, default=0, help="0: 20 for tiny and demo, 3 for sd15")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(a.out)
    path = out / "precision.json"
    report = json.loads(path.read_text()) if path.exists() else {"rows": {}, "machines": {}, "notes": []}
    m = machine()
    key = "native-bf16" if m["native_bf16"] else "no-native-bf16"
    report.setdefault("machines", {})[key] = m
    for name in a.models:
        with tempfile.TemporaryDirectory(prefix=f"precision-{name}-") as tmp:
            t0 = time.time()
            row = measure(name, a.modes, a.rounds or (3 if name == "sd15" else 20), Path(tmp))
        row.update(commit=git_head(), machine=key, wall_s=round(time.time() - t0, 1))
        report["rows"][f"{name}@{key}"] = row
        print(json.dumps({k: v for k, v in row.items() if k != "floor_step_times"}), flush=True)
        write_results(out, "precision", report, markdown(report))  # after each model: a later one that fails costs only its own row
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
