"""Which device a run uses: one rule for the trainer and the estimate. Torch-free: the estimate (and the
GUI through it) probes without importing torch; the trainer passes what torch reports."""
from __future__ import annotations

import os
import platform
import shutil
import sys

DEVICES = ("cpu", "cuda", "mps")


class DeviceUnavailable(RuntimeError):
    pass


def choose_device(want: str, cuda: bool, mps: bool) -> str:
    """"auto" → cuda, else mps, else cpu; a named device is taken as asked, except an absent CUDA."""
    if want == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if want == "cuda" and not cuda:
        raise DeviceUnavailable("precision.device = cuda, but no CUDA device is available")
    return want


def probe_without_torch() -> tuple[bool, bool]:
    """(cuda, mps) guessed from the system: an NVIDIA device node or driver tool; Apple silicon."""
    cuda = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
    mps = sys.platform == "darwin" and platform.machine() == "arm64"
    return cuda, mps


def probe_torch() -> tuple[bool, bool]:
    """(cuda, mps) as torch reports them (the truth, once torch is loaded)."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available(), bool(mps and mps.is_available())
