"""Which device a run uses: one rule for the trainer and the estimate. Torch-free: the estimate (and the
GUI through it) probes without importing torch; the trainer passes what torch reports."""
from __future__ import annotations

import functools
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


# ---------------------------------------------------------------- precision

# /proc/cpuinfo flags of CPUs that compute bf16 natively; elsewhere bf16 is emulated and slower than fp32
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in the text of /proc/cpuinfo (empty when it lists none)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):  # every core lists the same flags: the first line says it
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def system_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags as Linux reports them (empty where there is no /proc/cpuinfo); read once:
    the estimate asks on every form change."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return cpu_flags(f.read())
    except OSError:
        return frozenset()


def native_cpu_bf16(flags: frozenset[str] | None = None) -> bool:
    return any(f in (system_cpu_flags() if flags is None else flags) for f in CPU_BF16_FLAGS)


def choose_precision(device: str, mixed: str, cpu_bf16: str = "auto", *, cpu_native: bool = False,
                     cuda_bf16: bool = True) -> tuple[str, str]:
    """(what a run trains in: "fp32", "bf16" or "fp16"; why that differs from what was asked, else "").
    One rule for the trainer and the estimate. On a CPU only bf16 is mixed (fp16 matmuls there are slow and
    overflow-prone), and only where the CPU does it natively unless cpu_bf16 = "on" forces it."""
    kind = device.split(":")[0]
    if mixed == "no":
        return "fp32", ""
    if kind == "cuda":
        if mixed == "bf16" and not cuda_bf16:
            return "fp16", "this GPU has no bf16: training in fp16"
        return mixed, ""
    if kind == "cpu" and mixed == "bf16":
        if cpu_bf16 == "on":
            return "bf16", "" if cpu_native else ("precision.cpu_bf16 = on on a CPU without native bf16: bf16 is "
                                                  "emulated, several times slower than fp32")
        if cpu_bf16 == "off":
            return "fp32", "precision.cpu_bf16 = off: training in fp32"
        if cpu_native:
            return "bf16", ""
        return "fp32", "this CPU has no native bf16 (AVX512-BF16 or AMX): training in fp32"
    return "fp32", f"{mixed} on {kind}: training in fp32"
