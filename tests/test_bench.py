"""bench/bench_gpu.py runs end to end with --tiny on this CPU (the GPU grid itself needs a GPU), and --dry
lists the full grid without running anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def test_gpu_bench_dry_lists_the_grid():
    r = subprocess.run([sys.executable, "bench/bench_gpu.py", "--dry"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    cases = [json.loads(x) for x in r.stdout.splitlines()]
    assert {(c["name"], c["resolution"]) for c in cases} == {("sd15", 512), ("sdxl", 1024)}
    assert {c["batch"] for c in cases} == {1, 4} and {c["dtype"] for c in cases} >= {"float16", "bfloat16"}
    assert {c["gradient_checkpointing"] for c in cases} == {False, True}
    assert sum(c["ours"] for c in cases) == 2


def test_gpu_bench_tiny_runs_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, "bench/bench_gpu.py", "--tiny", "--max-cases", "2", "--out", str(tmp_path),
                        "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-tiny.json").read_text())
    rows = report["results"]
    assert len(rows) == 2 and not any(row.get("error") for row in rows), rows
    ours = [row for row in rows if row["ours"]]
    assert len(ours) == 1 and ours[0]["ours_s_per_step"] > 0 and ours[0]["floor_s_per_step"] > 0
    assert ours[0]["peak_rss_bytes"] > 100e6 and ours[0]["startup_to_first_step_s"] > 0
    assert rows[1]["gradient_checkpointing"] and rows[1]["floor_s_per_step"] > 0
    assert "| tiny | 64 | 1 |" in (tmp_path / "gpu-tiny.md").read_text()
