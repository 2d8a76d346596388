"""This machine's measured speed for the estimate: `python -m trainer calibrate` (a few seconds, a child
process, as training is: the page never imports torch) writes the data folder's calibration.json. It is
measured again when older than MAX_AGE_S, never while a run trains (that run's load would be measured),
and one measurement at a time."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from trainer.calibrate import read

MAX_AGE_S = 15 * 60


class Calibration:
    def __init__(self, root: Path, python: str):
        self.path = Path(root) / "calibration.json"
        self.python = python
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def current(self) -> dict | None:
        """The last measurement (None before the first one finishes)."""
        return read(self.path)

    def measuring(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def refresh(self, busy: bool) -> bool:
        """Start a measurement when the last is missing or stale and the machine is not training
        (`busy`); True when one was started."""
        last = self.current()
        if busy or (last and time.time() - float(last.get("when", 0)) < MAX_AGE_S):
            return False
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return False
            self._proc = subprocess.Popen([self.python, "-m", "trainer", "calibrate", "--out", str(self.path)],
                                          cwd=str(Path(__file__).resolve().parent.parent),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True

    def wait(self, timeout: float) -> dict | None:
        """The measurement under way, when it finishes (for the CLI and tests); then the current one."""
        with self._lock:
            proc = self._proc
        if proc is not None:
            proc.wait(timeout=timeout)
        return self.current()


def describe(speed: dict | None, measuring: bool) -> str:
    """A short line under the estimate: where its speed comes from."""
    if speed:
        mins = max(0, int((time.time() - float(speed.get("when", 0))) // 60))
        age = "just now" if mins < 1 else f"{mins} min ago"
        return f"Speed measured on this machine {age} ({speed['gflops']:.1f} GFLOP/s)."
    if measuring:
        return "Measuring this machine's speed (a few seconds); until then the time is for an idle machine."
    return "Time is for an idle machine of this project's kind; this machine's speed is not measured yet."
