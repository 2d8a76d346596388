"""Where a run is (step, epoch, position in the epoch) and where its wall time goes."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

ACTIVITIES = ("cache", "data", "sample", "save")


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    started_at: float = field(default_factory=time.time)
    step_times: list = field(default_factory=list)

    def eta(self, max_steps: int) -> float | None:
        if not self.step_times:
            return None
        recent = self.step_times[-20:]
        return (max_steps - self.step) * sum(recent) / len(recent)


class Timing:
    """Seconds spent per activity over this process's run (the finished event; bench/ reads them)."""

    def __init__(self):
        self.seconds = dict.fromkeys(ACTIVITIES, 0.0)

    @contextmanager
    def measure(self, activity: str):
        t0 = time.time()
        try:
            yield
        finally:
            self.seconds[activity] += time.time() - t0

    def report(self, progress: Progress) -> dict:
        return {k: round(v, 3) for k, v in {**self.seconds, "steps": sum(progress.step_times)}.items()}
