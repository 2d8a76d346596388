"""Start-up of `python -m trainer train` (not a test): seconds from the command to its first event and to
step 1, with the events in between, on a preset (default: the demo). Stops the run at step 1.
The events split the start-up into stages (see `stages`): interpreter + imports, model load, caching,
step-0 previews, step 1. Also times the trainer's imports alone in a fresh interpreter.

    .venv/bin/python bench/startup.py                      # presets/demo.toml
    .venv/bin/python bench/startup.py presets/tiny-test.toml
    .venv/bin/python bench/startup.py --label after --out bench/results   # add a column to startup.md
Also times `python -m trainer --help`. Prints one JSON object.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.endswith("}")]


def train_startup(preset: str) -> dict:
    run = Path(tempfile.mkdtemp(prefix="atelier-startup-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "1")  # as the other benches: 2 threads fight a shared machine's load
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", preset, "--preset", "--run-dir", str(run),
                             "--quiet"], cwd=REPO, env=env)
    step1 = None
    while proc.poll() is None and step1 is None:
        step1 = next((e for e in _events(run / "events.jsonl") if e["type"] == "step"), None)
        time.sleep(0.05)
    proc.terminate()
    proc.wait()
    ev = _events(run / "events.jsonl")
    shutil.rmtree(run, ignore_errors=True)
    return {"stages": stages(ev, t0),
            "first_event_s": round(ev[0]["time"] - t0, 2) if ev else None,
            "first_event": ev[0]["type"] if ev else None,
            "step1_s": round(step1["time"] - t0, 2) if step1 else None,
            "before_step1": [(e["type"], e.get("kind") or e.get("phase"), round(e["time"] - t0, 2))
                             for e in ev if e["type"] != "step"][:12]}


def stages(ev: list[dict], t0: float) -> dict:
    """Seconds per start-up stage, from the events alone (so it reads any version of the trainer):
    the `started` event's startup_s dates the start of Trainer._run (the trainer's modules imported and
    the config read); the first `caching` phase event ends the model load (data scan, model build and
    placing, adapter); `started` ends the caching; step 1's own time is 1/it_s, and what lies between
    `started` and step 1 besides it is the step-0 previews."""
    started = next((e for e in ev if e["type"] == "started"), None)
    step1 = next((e for e in ev if e["type"] == "step"), None)
    if started is None or step1 is None:
        return {}
    run_start = started["time"] - started.get("startup_s", 0.0)
    caching = next((e for e in ev if e["type"] == "phase" and e.get("phase") == "caching"), started)
    step_s = 1 / step1["it_s"] if step1.get("it_s") else 0.0
    out = {"launch_to_first_event": ev[0]["time"] - t0,
           "interpreter_imports_config": run_start - t0,
           "model_load": caching["time"] - run_start,
           "caching": started["time"] - caching["time"],
           "step0_previews": step1["time"] - started["time"] - step_s,
           "step1": step_s,
           "launch_to_step1": step1["time"] - t0}
    return {k: round(v, 2) for k, v in out.items()}


def import_seconds(repeats: int = 3) -> dict:
    """A fresh interpreter importing the training code (what `train` imports before Trainer._run), less
    a bare interpreter's start; the best of `repeats`."""
    def best(code: str) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.time()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=True)
            times.append(time.time() - t0)
        return min(times)
    bare = best("pass")
    return {"python_s": round(bare, 2),
            "trainer_train_loop_s": round(best("import trainer.cli, trainer.train.loop") - bare, 2)}


def help_seconds(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO, capture_output=True, check=True)
        times.append(time.time() - t0)
    return round(min(times), 2)


STAGES = [("launch_to_first_event", "command → first event"),
          ("interpreter_imports_config", "interpreter + imports + config (→ Trainer._run)"),
          ("model_load", "model load (data scan, build, adapter)"), ("caching", "caching (+ optimizer)"),
          ("step0_previews", "step-0 previews"), ("step1", "step 1"), ("launch_to_step1", "command → step 1")]


def markdown(report: dict) -> str:
    """The runs in `report` (label → list of results) as one table, a column per run."""
    runs = [(label, i, r) for label, rs in report["runs"].items() for i, r in enumerate(rs)]
    head = [f"{label} #{i + 1} ({r.get('commit', '')})" for label, i, r in runs]
    out = ["# Start-up of `python -m trainer train` (demo preset)", "",
           "Seconds from the command; stages from the run's events (bench/startup.py `stages`); "
           "1 OpenMP thread; the machine is shared (2 cores), the 1-minute load average is in the last rows.", "",
           "| stage | " + " | ".join(head) + " |", "|---|" + "---|" * len(runs)]
    for key, title in STAGES:
        out.append(f"| {title} | " + " | ".join(f"{r['stages'].get(key, float('nan')):.2f}" for *_, r in runs) + " |")
    out.append("| first event | " + " | ".join(str(r["first_event"]) for *_, r in runs) + " |")
    out.append("| imports alone, fresh interpreter (trainer.cli + trainer.train.loop) | "
               + " | ".join(f"{r['imports']['trainer_train_loop_s']:.2f}" for *_, r in runs) + " |")
    out.append("| `--help` | " + " | ".join(f"{r['help_s']:.2f}" for *_, r in runs) + " |")
    out.append("| load 1 min | " + " | ".join(f"{r['load_1min']:.1f}" for *_, r in runs) + " |")
    if report.get("notes"):
        out += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="presets/demo.toml")
    ap.add_argument("--label", help="with --out: the column's label (e.g. before / after)")
    ap.add_argument("--out", help="a folder: add this run to its startup.json and rewrite startup.md")
    a = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    result = {"help_s": help_seconds(), "imports": import_seconds(), "preset": a.preset, "commit": commit,
              "load_1min": round(os.getloadavg()[0], 2), **train_startup(a.preset)}
    print(json.dumps(result))
    if a.out:
        out = Path(a.out)
        path = out / "startup.json"
        report = json.loads(path.read_text()) if path.exists() else {"runs": {}, "notes": []}
        report["runs"].setdefault(a.label or commit, []).append(result)
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        (out / "startup.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
