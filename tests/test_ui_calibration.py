"""The estimate's speed: `python -m trainer calibrate` run by the studio as a child process (real), kept
in the data folder, measured again when stale, never while a run trains; the estimate box says where its
speed comes from."""
from __future__ import annotations

import json
import sys
import time

from trainer.config import load_preset
from ui.calibration import MAX_AGE_S, Calibration, describe
from ui.tab_train import estimate_text


def test_the_studio_measures_this_machine_once_and_again_when_stale(tmp_path):
    cal = Calibration(tmp_path, sys.executable)
    assert cal.current() is None
    assert not cal.refresh(busy=True)  # a run is training: its load would be measured
    assert cal.refresh(busy=False)
    assert not cal.refresh(busy=False)  # one measurement at a time
    speed = cal.wait(timeout=300)
    assert speed and speed["gflops"] > 0 and speed["repetitions"] >= 3
    assert not cal.refresh(busy=False)  # fresh: kept
    stale = {**speed, "when": time.time() - MAX_AGE_S - 1}
    cal.path.write_text(json.dumps(stale))
    assert not cal.refresh(busy=True)
    assert cal.refresh(busy=False)
    assert cal.wait(timeout=300)["when"] > stale["when"]
    cal.path.write_text("{not json")
    assert cal.current() is None  # an unreadable file: uncalibrated, never an error


def test_the_estimate_box_uses_the_measured_speed_and_says_so():
    cfg = load_preset("demo")
    slow = {"gflops": 1.0, "when": time.time()}
    fast = {"gflops": 100.0, "when": time.time() - 600}
    a = estimate_text(cfg, 10, 10, "zkq", slow, describe(slow, False))
    b = estimate_text(cfg, 10, 10, "zkq", fast, describe(fast, False))
    assert "measured on this machine just now (1.0 GFLOP/s)" in a
    assert "10 min ago (100.0 GFLOP/s)" in b
    step = lambda text: float(text.split(" s/step")[0].rsplit(", ", 1)[1])  # noqa: E731
    assert step(a) > step(b)
    assert "not measured yet" in describe(None, False) and "Measuring" in describe(None, True)
