"""Start-up of `python -m trainer train` (not a test): seconds from the command to its first event and to
step 1, with the events in between, on a preset (default: the demo). Stops the run at step 1.

    .venv/bin/python bench/startup.py                      # presets/demo.toml
    .venv/bin/python bench/startup.py presets/tiny-test.toml
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
    return {"first_event_s": round(ev[0]["time"] - t0, 2) if ev else None,
            "first_event": ev[0]["type"] if ev else None,
            "step1_s": round(step1["time"] - t0, 2) if step1 else None,
            "before_step1": [(e["type"], e.get("kind") or e.get("phase"), round(e["time"] - t0, 2))
                             for e in ev if e["type"] != "step"][:12]}


def help_seconds(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=REPO, capture_output=True, check=True)
        times.append(time.time() - t0)
    return round(min(times), 2)


if __name__ == "__main__":
    preset = sys.argv[1] if len(sys.argv) > 1 else "presets/demo.toml"
    print(json.dumps({"help_s": help_seconds(), "preset": preset, **train_startup(preset)}))
