"""Where a run is (step, epoch, position in the epoch) and where its wall time goes."""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

ACTIVITIES = ("cache", "data", "sample", "save", "validate")


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    started_at: float = field(default_factory=time.time)
    step_times: list = field(default_factory=list)

    def eta(self, max_steps: int, extra_s: float = 0.0) -> float | None:
        """Seconds left: the remaining steps at the recent steps' pace, plus `extra_s` (the previews and
        saves still due, from their measured times)."""
        if not self.step_times:
            return None
        recent = self.step_times[-20:]
        return (max_steps - self.step) * sum(recent) / len(recent) + extra_s

    def step_fields(self, max_steps: int, loss: float, lr: float, keys: list[str], extra_s: float) -> dict:
        """The step event's fields for the step just taken; extra_s: the previews and saves still due."""
        dt, eta = self.step_times[-1], self.eta(max_steps, extra_s)
        # batch: a short fingerprint of what the step trained on, so a resumed run's data order can be checked
        return dict(step=self.step, max_steps=max_steps, loss=round(loss, 6), lr=lr,
                    batch=hashlib.sha256("|".join(keys).encode()).hexdigest()[:12], epoch=self.epoch,
                    it_s=round(1 / dt, 3) if dt > 0 else None, eta_s=round(eta, 1) if eta is not None else None)


def due_after(step: int, max_steps: int, every: int) -> int:
    """How many times a schedule "every N steps, and once at the end" still fires after `step` (the loop
    skips the schedule at the last step: the end's round serves)."""
    if step >= max_steps:
        return 0
    return ((max_steps - 1) // every - step // every if every else 0) + 1


class Timing:
    """Seconds spent per activity over this process's run (the finished event; bench/ reads them)."""

    def __init__(self):
        self.seconds = dict.fromkeys(ACTIVITIES, 0.0)
        self.counts = dict.fromkeys(ACTIVITIES, 0)

    @contextmanager
    def measure(self, activity: str):
        t0 = time.time()
        try:
            yield
        finally:
            self.seconds[activity] += time.time() - t0
            self.counts[activity] += 1

    def mean(self, activity: str) -> float:
        """Mean seconds of one `activity` so far (0 before the first)."""
        return self.seconds[activity] / self.counts[activity] if self.counts[activity] else 0.0

    def saves_left(self, step: int, max_steps: int, cfg) -> float:
        """Seconds of the saves still due after `step`, at the pace of those made (0 before the first), and
        of the validations that follow them (and those due between saves), at the pace of those measured."""
        saves = due_after(step, max_steps, cfg.saving.every_n_steps)
        validations = saves + (due_after(step, max_steps, cfg.validation.every_n_steps) - 1
                               if cfg.validation.every_n_steps else 0)
        return saves * self.mean("save") + validations * self.mean("validate")

    def report(self, progress: Progress) -> dict:
        return {k: round(v, 3) for k, v in {**self.seconds, "steps": sum(progress.step_times)}.items()}


class StepDisplay:
    """Loss and learning rate where a person watches outside the GUI: TensorBoard (when installed) and,
    on a terminal, a progress bar."""

    def __init__(self, root, max_steps: int, start_step: int, terminal: bool):
        self.tb = self.bar = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(root / "tensorboard"))
        except Exception:
            pass
        if terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.tb:
            self.tb.add_scalar("loss", loss, step)
            self.tb.add_scalar("lr", lr, step)
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Another curve beside the loss (e.g. loss/validation)."""
        if self.tb:
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.tb:
            self.tb.close()
