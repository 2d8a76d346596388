"""Nothing lost: SIGKILL at seeded points (mid-step, mid-save, mid-sampling), resume from the newest
whole state, end with exactly the adapter an uninterrupted run writes."""
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, events, make_dataset, run_in_process, run_trainer, write_config

MAX_STEPS = 9
SETTINGS = {"schedule.max_train_steps": MAX_STEPS, "saving.every_n_steps": 3, "saving.keep_last": 2,
            "saving.precision": "fp32", "sampling.every_n_steps": 4, "sampling.steps": 2,
            "sampling.with_base": "false", "dataset.batch_size": 2, "dataset.flip": "true",
            "dataset.shuffle_caption": "true", "network.dropout": 0.1, "schedule.scheduler": "cosine",
            "schedule.warmup_steps": 2}


def _kill_points() -> list[str]:
    # one of each kind (mid-step, mid-save of the state before and after its rename, mid-adapter write,
    # mid-preview); each costs a fresh trainer process, so the mid-step point is seeded rather than repeated
    rng = random.Random(20261129)
    return [f"step@{rng.randint(1, MAX_STEPS - 1)}", "state-written@6", "state-renamed@3", "adapter@6",
            "sample@4"]


def _final(run):
    adapter = load_file(str(run / "output" / "tiny-test.safetensors"))
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    return adapter, load_file(str(last / "optimizer.safetensors")), last.name


def _batches(run) -> dict[int, str]:
    return {e["step"]: e["batch"] for e in events(run) if e["type"] == "step"}


@pytest.mark.slow
def test_sigkill_at_seeded_points_then_resume_equals_uninterrupted(tmp_path):
    data = make_dataset(tmp_path / "data", n=6)
    ref_run = tmp_path / "ref"
    # the kills need a process of their own; the reference and the resumes run here (same code, one thread)
    r = run_in_process("train", str(write_config(ref_run, **{"dataset.path": str(data), **SETTINGS})), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    ref_adapter, ref_opt, ref_last = _final(ref_run)
    ref_batches = _batches(ref_run)
    points = _kill_points()
    for point in points:
        run = tmp_path / point.replace("@", "-")
        cfg = write_config(run, **{"dataset.path": str(data), **SETTINGS})
        killed = run_trainer("train", str(cfg), "--quiet", env={"ATELIER_FAULT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr[-2000:])
        resumed = run_in_process("train", str(cfg), "--resume", "--quiet")
        assert resumed.returncode == 0, (point, resumed.stderr[-2000:])
        adapter, opt, last = _final(run)
        assert last == ref_last
        assert adapter.keys() == ref_adapter.keys()
        diff = max((adapter[k].float() - ref_adapter[k].float()).abs().max().item() for k in adapter)
        assert diff <= 1e-6, (point, diff)
        assert opt.keys() == ref_opt.keys()
        assert all(torch.equal(opt[k], ref_opt[k]) for k in opt), point
        assert _batches(run) == ref_batches, point  # same data order, step by step
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        leftovers += [p.name for p in (run / "output").iterdir() if p.name.startswith(".")]
        assert leftovers == [], (point, leftovers)
    print(f"kill points tried: {len(points)} ({', '.join(points)})")


def test_sigterm_stops_gracefully_and_saves(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 100000,
                                            "sampling.prompts": []})
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", str(cfg), "--quiet"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (tmp_path / "run" / "events.jsonl").exists() and any(
                e["type"] == "step" for e in events(tmp_path / "run")):
            break
        time.sleep(0.2)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    assert rc == 3, proc.stderr.read().decode()[-2000:]
    print(f"graceful stop took {time.time() - t0:.1f}s")
    ev = events(tmp_path / "run")
    assert ev[-1]["type"] == "finished" and ev[-1]["status"] == "stopped"
    step = ev[-1]["step"]
    assert (tmp_path / "run" / "output" / f"tiny-test-step{step:06d}.safetensors").exists()
    assert (tmp_path / "run" / "checkpoints" / f"step-{step:08d}").is_dir()


def test_failed_save_keeps_previous_state_and_reports(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    cfg = write_config(tmp_path / "run", **{"dataset.path": str(data), "schedule.max_train_steps": 6,
                                            "saving.every_n_steps": 2, "sampling.prompts": []})
    r = run_trainer("train", str(cfg), "--quiet", env={"ATELIER_FAULT": "enospc@4"})
    assert r.returncode == 1
    ev = events(tmp_path / "run")
    assert ev[-1]["status"] == "failed"
    err = next(e for e in ev if e["type"] == "error")
    assert "No space left" in err["message"] and "intact" in err["message"]
    from trainer.run.state import latest_state, load_state

    state = latest_state(tmp_path / "run" / "checkpoints")
    assert state is not None and state.name == "step-00000002"
    load_state(state)  # loadable
    load_file(str(tmp_path / "run" / "output" / "tiny-test-step000002.safetensors"))


def test_low_disk_is_refused_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from trainer.config import load_config
    from trainer.train.loop import Trainer

    data = make_dataset(tmp_path / "data", n=2)
    cfg = load_config(write_config(tmp_path / "run", **{"dataset.path": str(data), "sampling.prompts": []}))
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    assert Trainer(cfg, tmp_path / "run", quiet=True).run() == 1
    err = next(e for e in events(tmp_path / "run") if e["type"] == "error")
    assert "not enough free disk" in err["message"]
