"""Shared test helpers: generated datasets, subprocess trainer runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
LORA_KEYS = REPO / "trainer" / "assets" / "lora_keys"  # the expected kohya names, shipped with the project


def make_dataset(folder: Path, n: int = 4, size: int = 64, seed: int = 0, caption: str = "a sks shape") -> Path:
    """n small coloured-shape images with captions (real PNG files)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size, size, 3), 255, np.uint8)
        c = rng.integers(0, 255, 3)
        x0, y0 = rng.integers(4, size // 2, 2)
        arr[y0:y0 + size // 3, x0:x0 + size // 3] = c
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"{caption}, number {i}", encoding="utf-8")
    return folder


def write_config(run_dir: Path, preset: str = "tiny-test", **sets) -> Path:
    """A full config.toml in run_dir: a preset plus overrides {"section.key": value}."""
    sys.path.insert(0, str(REPO))
    from trainer.config import apply_overrides, from_dict, load_preset, save_config

    cfg = load_preset(preset)
    data = apply_overrides(cfg.model_dump(mode="json"), [f"{k}={v}" for k, v in sets.items()
                                                         if not isinstance(v, list)])
    for k, v in sets.items():
        if isinstance(v, list):
            s, key = k.split(".")
            data[s][key] = v
    cfg = from_dict(data)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    return run_dir / "config.toml"


def run_trainer(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=e)


def run_in_process(*args: str) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` run by this interpreter: the CLI's own code, without a fresh process's
    interpreter and imports (~10 s each on a loaded 2-core machine). For tests of what a run does, not of
    the process (kills, exit signals and start-up stay with run_trainer). Two process-wide side effects are
    undone: the CLI hides bitsandbytes from a run that does not quantise (peft caches that answer, so later
    tests could not quantise), and the trainer takes SIGTERM/SIGINT for its graceful stop. One torch thread,
    as run_trainer's processes have, so both give the same numbers bit for bit."""
    import contextlib
    import io
    import signal
    from unittest import mock

    from trainer import cli

    import torch

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with mock.patch.object(cli, "keep_bitsandbytes_unloaded", lambda: None), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(list(args))
            except SystemExit as e:  # argparse's refusals
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(["python", "-m", "trainer", *args], rc, out.getvalue(), err.getvalue())


def events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def expected_rows(tsv: str, target: str = "default") -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in (LORA_KEYS / tsv).read_text().splitlines()[1:]:
        name, kind, shape, tgt = line.split("\t")
        if tgt == target:
            rows[name] = tuple(int(x) for x in shape.split("x"))
    return rows
