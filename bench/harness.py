"""What both benchmarks share: a generated dataset, one run of OUR trainer in a child process, and the floor
(a bare forward+backward of the same UNet with the same LoRA, shapes and dtype) in another.

Each measurement is its own process, so peak RSS (ru_maxrss from wait4) belongs to that measurement alone
and import/start-up costs are real. Children are this file run as a script:
    python bench/harness.py ours  CONFIG.toml RUN_DIR RESULT.json
    python bench/harness.py floor SPEC.json RESULT.json
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- parent side

def make_dataset(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """n coloured-shape PNGs of size×size with captions (real files, like a user's)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size, size, 3), 255, np.uint8)
        arr[...] = rng.integers(0, 255, 3)
        x0, y0 = rng.integers(0, size // 2, 2)
        arr[y0:y0 + size // 3, x0:x0 + size // 3] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"a sks shape, number {i}", encoding="utf-8")
    return folder


def write_results(out: Path, stem: str, report: dict, markdown: str) -> None:
    """bench/results' pair for one bench: <stem>.json (every row so far) and <stem>.md, each written
    atomically, so a bench that dies mid-way leaves the last whole files."""
    from trainer.run.atomic import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{stem}.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(out / f"{stem}.md", markdown.encode())


def child_env(threads: int | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(args: list[str], threads: int | None, timeout: float, extra_env: dict | None = None) -> tuple[int, float, str]:
    """(exit code, launch time, stderr tail) of `python bench/harness.py *args`. The child reports its own
    peak RSS (getrusage of itself) in its result file: RUSAGE_CHILDREN would be a max over all children."""
    t_launch = time.time()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=REPO,
                            env={**child_env(threads), **(extra_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = t_launch + timeout
    err_chunks = []
    try:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
        err_chunks.append(err or "")
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err_chunks.append((err or "") + "\n[bench] killed: timeout")
    return proc.returncode, t_launch, "".join(err_chunks)[-4000:]


def steady_step_seconds(step_times: list[float], warmup: int) -> float:
    """Median of the per-step wall times after `warmup` steps (first steps pay allocator/page-in costs)."""
    tail = step_times[warmup:] or step_times
    return statistics.median(tail)


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def measure_ours(config_path: Path, run_dir: Path, warmup: int, threads: int | None, timeout: float,
                 inproc_floor_steps: int = 0) -> dict:
    """Train through our trainer in a child process; times from its events, memory from the child. With
    inproc_floor_steps, the child then times that many bare passes of its own UNet (after warm-up)."""
    result_path = run_dir / "bench-result.json"
    rc, t_launch, err = run_child(["ours", str(config_path), str(run_dir), str(result_path)], threads, timeout,
                                  {"BENCH_INPROC_FLOOR": str(inproc_floor_steps)})
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"our trainer failed (exit {rc}) on {config_path}:\n{err}")
    child = json.loads(result_path.read_text())
    ev = read_events(run_dir)
    steps = [e for e in ev if e["type"] == "step"]
    started = next(e for e in ev if e["type"] == "started")
    finished = next(e for e in ev if e["type"] == "finished")
    if finished.get("status") != "finished":
        raise RuntimeError(f"run ended {finished.get('status')}: {[e for e in ev if e['type'] == 'error']}")
    # a step's own wall time: gap between consecutive step events (nothing else runs in between here)
    starts = [started["time"]] + [e["time"] for e in steps[:-1]]
    per_step = [e["time"] - s for e, s in zip(steps, starts)][1:]  # the first gap holds the start previews
    timing = finished.get("timing", {})
    n_images_sampled = sum(1 for e in ev if e["type"] == "sample")
    return {
        "inproc_floor_s_per_step": child.get("inproc_floor_s_per_step"),
        "inproc_floor_step_times": child.get("inproc_floor_step_times"),
        "steps": len(steps),
        "s_per_step": steady_step_seconds(per_step, max(0, warmup - 1)),
        "step_times": [round(x, 4) for x in per_step],
        "peak_rss_bytes": child["peak_rss_bytes"],
        "peak_vram_bytes": child.get("peak_vram_bytes"),
        "startup_to_started_s": round(started["time"] - t_launch, 3),
        "startup_to_first_step_s": round(steps[0]["time"] - t_launch, 3),
        "wall_s": round(child["wall_s"], 3),
        "timing": timing,
        "images_sampled": n_images_sampled,
        "device": started.get("device"), "dtype": started.get("dtype"),
        "trainable_params": started.get("trainable_params"),
    }


def measure_floor(spec: dict, threads: int | None, timeout: float, result_path: Path) -> dict:
    result_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path = result_path.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    rc, _, err = run_child(["floor", str(spec_path), str(result_path)], threads, timeout)
    if rc != 0 or not result_path.exists():
        raise RuntimeError(f"floor measurement failed (exit {rc}):\n{err}")
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------- child side

def _peaks() -> dict:
    import resource

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["peak_vram_bytes"] = torch.cuda.max_memory_allocated()
            out["peak_vram_reserved_bytes"] = torch.cuda.max_memory_reserved()
    except Exception:
        pass
    return out


def child_ours(config: str, run_dir: str, result: str) -> int:
    t0 = time.time()
    from trainer.config import load_config
    from trainer.train.loop import Trainer

    cfg = load_config(config)
    trainer = Trainer(cfg, Path(run_dir), quiet=True)
    code = trainer.run()
    out = {"exit": code, "wall_s": time.time() - t0, **_peaks()}
    inproc = int(os.environ.get("BENCH_INPROC_FLOOR", "0"))
    if code == 0 and inproc:
        # the floor again, in this process on the trainer's own UNet right after training: same memory state
        # and load as our steps, so the ratio is not a comparison of two different moments of a busy machine
        import torch

        spec = {"model": cfg.model.base, "resolution": cfg.dataset.resolution, "batch": cfg.dataset.batch_size,
                "warmup": 1, "steps": inproc}
        times = bare_steps(trainer.base.unet, trainer.base.family, spec, trainer.device.split(":")[0],
                           trainer.dtype, trainer.network.all_params())
        out["inproc_floor_s_per_step"] = steady_step_seconds(times, 1)
        out["inproc_floor_step_times"] = [round(x, 4) for x in times]
    Path(result).write_text(json.dumps(out))
    return code


def floor_unet(spec: dict):
    """The UNet (only) of the spec's base, with the same LoRA as our trainer injects."""
    import torch

    from trainer.config import NetworkSection
    from trainer.models.base import Base
    from trainer.adapter.network import build_network

    model = spec["model"]
    if model.startswith("tiny:"):
        from trainer.models.tiny import build_tiny

        b = build_tiny(model.split(":")[1])
        family, unet = b.family, b.unet
    elif model.startswith("random:"):
        from trainer.models.random_arch import build_random

        family = {"sd15": "sd1"}.get(model.split(":")[1], model.split(":")[1])
        torch.manual_seed(0)
        # built where it runs: random init of SDXL's 2.6 B parameters on a CPU alone takes a minute
        unet = build_random(family, ("unet",), device=spec.get("device", "cpu"))["unet"]
    elif model.startswith("builtin:"):
        from trainer.models.resolve import load_any

        b = load_any(model)  # a small bundled base (the demo's): its VAE and text encoder are let go at once
        family, unet = b.family, b.unet
        del b
    else:
        raise ValueError(f"floor: unsupported model spec {model!r} (tiny:…, random:… or builtin:…)")
    unet.requires_grad_(False)
    base = Base(family=family, unet=unet, vae=None, text_encoders=[], tokenizers=[], scheduler=None)
    net_cfg = NetworkSection(**spec["network"])
    net_cfg = net_cfg.model_copy(update={"train_text_encoder": False})
    network = build_network(base, net_cfg)
    return family, unet, network


def bare_steps(unet, family: str, spec: dict, device: str, dtype, params, optimizer=None) -> list[float]:
    """Wall times of warmup+steps bare forward+backward passes: random latents and conditioning of the
    trainer's shapes, MSE to random noise, gradients of `params` cleared between passes. With `optimizer`,
    each pass also takes its step (timed)."""
    import torch
    import torch.nn.functional as F

    # the real VAEs and the tiny model's downsample by 8; other bases (the demo's: 4) say theirs in the spec,
    # with their latent channels and caption length
    factor = spec.get("latent_factor") or 8
    b, h, w = spec["batch"], spec["resolution"] // factor, spec["resolution"] // factor
    c, tokens = spec.get("latent_channels", 4), spec.get("tokens", 77)
    cross = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(b, c, h, w, generator=g).to(device, dtype)
    noise = torch.randn(b, c, h, w, generator=g).to(device)
    ehs = torch.randn(b, tokens, cross, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    kwargs = {}
    if family == "sdxl":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(b, pooled, generator=g).to(device, dtype),
            "time_ids": torch.tensor([[spec["resolution"]] * 2 + [0, 0] + [spec["resolution"]] * 2] * b,
                                     dtype=dtype, device=device)}
    autocast = (torch.autocast(device_type=device, dtype=dtype) if dtype != torch.float32
                else torch.autocast(device_type="cpu", enabled=False))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        sync()
        t0 = time.perf_counter()
        with autocast:
            pred = unet(lat, t, ehs, **kwargs).sample
        F.mse_loss(pred.float(), noise).backward()
        if optimizer is not None:
            optimizer.step()
        sync()
        times.append(time.perf_counter() - t0)
        for p in params:
            p.grad = None
    return times


def child_floor(spec_path: str, result: str) -> int:
    """The floor in a process of its own: the UNet alone, with the trainer's LoRA, dtype and shapes."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    device, dtype = spec.get("device", "cpu"), getattr(torch, spec.get("dtype", "float32"))
    family, unet, network = floor_unet(spec)
    unet.to(device, None if dtype == torch.float32 else dtype)
    for p in network.all_params():
        p.data = p.data.float()
    if spec.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    if spec.get("attention") == "xformers":
        unet.enable_xformers_memory_efficient_attention()
    unet.train()
    times = bare_steps(unet, family, spec, device, dtype, network.all_params())
    out = {"s_per_step": steady_step_seconds(times, spec["warmup"]), "step_times": [round(x, 4) for x in times],
           **_peaks()}
    Path(result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "ours" and len(sys.argv) == 5:
        raise SystemExit(child_ours(*sys.argv[2:]))
    if cmd == "floor" and len(sys.argv) == 4:
        raise SystemExit(child_floor(*sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    raise SystemExit(2)
