"""Peak memory per phase of a run (model load, caching, training, previews): the process's resident set
(RSS) and, on a CUDA device, the memory torch allocated there.

Linux keeps the RSS high-water mark in /proc/self/status (VmHWM) and resets it to the current RSS when "5"
is written to /proc/self/clear_refs, so each phase gets its own peak. Where that reset is refused (or on
another system) the peak is the process's since it started (getrusage), which is then said by
"rss_since_start": true."""
from __future__ import annotations

import resource
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

PHASES = ("model load", "caching", "training", "previews")


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """The RSS high-water mark (since the last reset, where resets work), MiB."""
    hwm = _vm_hwm_mib()
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, kB elsewhere


class PhasePeaks:
    """The run's peaks by phase. `enter(phase)` closes the phase before it (its peak is recorded, and told
    to `on_close(phase, fields)`) and starts measuring anew; a phase entered more than once (training,
    between preview rounds) keeps the highest peak of its stretches."""

    def __init__(self, device: str, on_close: Callable[[str, dict], None] | None = None):
        self.cuda = device.split(":")[0] == "cuda"
        self.device = device
        self.on_close = on_close
        self.peaks: dict[str, dict] = {}
        self.phase: str | None = None
        self.resets = True

    def enter(self, phase: str | None) -> str | None:
        """Start measuring `phase` (None: stop); returns the phase that was being measured."""
        before = self.phase
        if before is not None:
            self._close(before)
        self.phase = phase
        if phase is not None:
            self.resets = _reset_rss_peak() and self.resets
            if self.cuda:
                import torch

                torch.cuda.reset_peak_memory_stats(self.device)
        return before

    @contextmanager
    def during(self, phase: str):
        """`phase` for the duration, then back to the phase before."""
        before = self.enter(phase)
        try:
            yield
        finally:
            self.enter(before)

    def _close(self, phase: str) -> None:
        fields = {"peak_rss_mib": round(peak_rss_mib(), 1)}
        if self.cuda:
            import torch

            fields["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if not self.resets:
            fields["rss_since_start"] = True
        old = self.peaks.get(phase)
        merged = fields if old is None else {k: max(v, old.get(k, v)) if isinstance(v, float) else v
                                              for k, v in fields.items()}
        self.peaks[phase] = merged
        if self.on_close is not None:
            self.on_close(phase, fields)

    def report(self) -> dict[str, dict]:
        """{phase: {"peak_rss_mib", ["cuda_peak_mib"]}} over the run so far (the finished event's memory)."""
        return {p: dict(v) for p, v in self.peaks.items()}


def reporter(events, log: Callable[[str], None]) -> Callable[[str, dict], None]:
    """A PhasePeaks `on_close` that tells each closed phase as a `memory` event and a log line."""
    def on_close(phase: str, fields: dict) -> None:
        events.emit("memory", phase=phase, **fields)
        cuda = f", CUDA peak {fields['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in fields else ""
        log(f"memory: {phase}: peak RSS {fields['peak_rss_mib']:.0f} MiB{cuda}")
    return on_close
