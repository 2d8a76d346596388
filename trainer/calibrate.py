"""`python -m trainer calibrate`: a few seconds of measurement that tell the estimate how fast this machine
trains now. The training step of a UNet is dominated by 3×3 convolutions and attention matmuls, forward
and backward; this times a small mix of both (fp32, the thread count training uses) and reports the
achieved GFLOP/s. trainer.estimate turns that into seconds per step with its per-family work figures
(FLOP per latent pixel, fitted on measured runs: bench/estimate_accuracy.py).

The result is one JSON object (see `measure`); `--out FILE` also writes it there atomically, which is
where the studio keeps it (its data folder's calibration.json)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# the work of one repetition: a UNet-like 3×3 convolution and an attention-sized matmul, forward + backward
CONV = (1, 320, 16, 16)       # N, C, H, W: an SD1.5 first-stage block (small enough for ~10 repetitions)
MATMUL = (256, 320, 320)      # tokens × channels @ channels × channels


def _work_flops() -> float:
    n, c, h, w = CONV
    conv = 2 * n * c * c * 9 * h * w  # forward multiply-adds × 2
    m, k, nn = MATMUL
    mm = 2 * m * k * nn
    return 3 * (conv + mm)  # backward ≈ twice the forward (input and weight gradients)


def measure(seconds: float = 2.0, threads: int | None = None) -> dict:
    """Achieved GFLOP/s of the UNet-like mix over about `seconds` (median of the repetitions, so a
    moment of contention does not decide it; the load of the machine now is meant to count)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*CONV, generator=g, requires_grad=True)
    conv_w = torch.randn(CONV[1], CONV[1], 3, 3, generator=g, requires_grad=True)
    a = torch.randn(MATMUL[0], MATMUL[1], generator=g, requires_grad=True)
    b = torch.randn(MATMUL[1], MATMUL[2], generator=g, requires_grad=True)

    def once() -> None:
        y = torch.nn.functional.conv2d(x, conv_w, padding=1)
        z = a @ b
        (y.sum() + z.sum()).backward()

    once()  # warm-up: allocator, kernels chosen
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {"gflops": round(_work_flops() / median / 1e9, 3), "repetitions": len(times),
            "threads": torch.get_num_threads(), "device": "cpu", "torch": torch.__version__.split("+")[0],
            "cpu": platform.processor() or platform.machine(), "load_avg_1m": _load(),
            "when": time.time()}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def read(path: str | Path) -> dict | None:
    """A saved calibration, or None when there is none or it cannot be read (never an error: the
    estimate then says it is uncalibrated)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("gflops"), (int, float)) and data["gflops"] > 0 \
        else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="how long to measure (default 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: as training uses)")
    ap.add_argument("--out", help="also write the result to this JSON file (atomically)")
    a = ap.parse_args(argv)
    result = measure(a.seconds, a.threads or None)
    text = json.dumps(result)
    if a.out:
        from trainer.run.atomic import atomic_write_text

        atomic_write_text(Path(a.out), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
