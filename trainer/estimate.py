"""Memory and time before launch: steps, epochs, peak memory and seconds per step for a config.

Pure Python (no torch import), so the GUI can call it on every form change. The model is deliberately
simple — weights + adapter/optimizer state + activations + a fixed process overhead — with its constants
calibrated where they can be measured:
- CPU: measured by bench/bench_cpu.py on this project's 2-core machines (bench/results/cpu.md), fp32
  (those CPUs lack native bf16, so the trainer runs fp32 there; on a CPU with AVX512-BF16 or AMX the
  base weights count at 2 bytes, time and activations stay the fp32 figures). Speeds vary 3-10x with load.
- CUDA: NOT measured here (no GPU was available); from public LoRA-training figures (kohya sd-scripts /
  diffusers reports: SD1.5 512 px ~7 it/s and SDXL 1024 px ~1.5 it/s at batch 1 on a 24 GB card;
  SDXL LoRA at 1024 px fits 12 GB only with gradient checkpointing). Flagged `measured: False`.
bench/bench_gpu.py measures them whenever a GPU is at hand; put its numbers here.
"""
from __future__ import annotations

import math

from trainer.config import adapter_starts_at_base
from trainer.train.device import choose_precision, native_cpu_bf16
from trainer.train.preview_styles import preview_plan

# parameter counts of the bundled configs (trainer/assets/configs, counted from the built modules) and the
# sum of (in + out) features over sd-scripts' default LoRA targets, so LoRA params = rank × that sum
FAMILY_PARAMS: dict[str, dict] = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text": [123_060_480],
            "unet_lora_io": 423_936, "conv_lora_io": 626_880, "te_lora_io": [165_888]},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text": [340_387_840],
            "unet_lora_io": 432_128, "conv_lora_io": 626_880, "te_lora_io": [423_936]},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text": [123_060_480, 694_659_840],
             # TE1 without its last layer: it feeds nothing in SDXL, so it gets no adapter
             "unet_lora_io": 2_659_840, "conv_lora_io": 414_400, "te_lora_io": [152_064, 737_280]},
    "tiny": {"unet": 792_964, "vae": 1_250_759, "text": [1_626_304],
             "unet_lora_io": 5_376, "conv_lora_io": 12_832, "te_lora_io": [2_240]},
}
# weights in nn.Linear layers (what QLoRA quantises and LoftQ decomposes): bench/results/qlora.md, meta models
LINEAR_PARAMS: dict[str, dict] = {
    "sd1": {"unet": 270_049_280, "text": [84_934_656]},
    "sd2": {"unet": 301_219_840, "text": [289_406_976]},
    "sdxl": {"unet": 2_232_647_680, "text": [84_934_656, 630_784_000]},
    "tiny": {"unet": 212_992, "text": [40_960]},
}
# LoftQ's set-up: a randomised SVD of each adapted Linear's quantisation error for its top rank+8 directions
# (trainer.adapter.quantize.top_singular), ~1.9e-8 s per weight and direction on this project's loaded 2-core
# machine (1280×5120 at rank 16: 2.9 s; the full SVD it replaced: 79 s), plus dequantising and comparing
LOFTQ_S_PER_WEIGHT_DIRECTION = 1.9e-8
LOFTQ_S_PER_WEIGHT = 2.0e-8
LOFTQ_OVERSAMPLE = 8
# `random:sdxl` (benchmarks) keeps 2 of text_encoder_2's 32 layers (trainer/models/random_arch.py)
SPEC_TEXT_PARAMS = {"random:sdxl": [123_060_480, 104_540_160]}

LATENT_CHANNELS = 4
VAE_DOWNSCALE = {"shapes": 4}  # the demo base's VAE has three blocks; SD's VAEs and the tiny one (four): 8
FP32 = 4

# ---- CPU calibration (bench/bench_cpu.py, fp32, 1 thread, this machine; see bench/results/cpu.md)
# memory is load-independent: process baseline from the tiny row, activations from the SD1.5 and SDXL rows
CPU_PROCESS_BYTES = 0.56e9         # python + torch + diffusers + transformers + peft, imported and running
# activation bytes held for backward, per latent pixel of one sample, fp32, gradient checkpointing off
CPU_ACT_BYTES_PER_LATENT_PX = {"sd1": 1.02e6, "sd2": 1.02e6, "sdxl": 2.03e6, "tiny": 2.0e4}
# speed is not: it is the work of a step over the speed this machine has now. `python -m trainer calibrate`
# measures that speed in a few seconds (GFLOP/s achieved on a UNet-like mix of 3×3 convolutions and matmuls,
# trainer/calibrate.py); the work of a step is in those same units: its measured seconds × the GFLOP/s
# calibrate measured just before. Fitted by bench/estimate_accuracy.py (--fit) on its "fit" rows, each run
# with its own calibration at 1 thread (tiny at 64 px and 128 px batch 2, 2026-12-01, load 2-3, with the tiny
# VAE's 8× downscale; SD1.5 at 256 px and the demo, 2026-11-30, load 1-4). SD2 as SD1 (its text encoder is
# cached); SDXL as SD1.5 × 3.0, the ratio of their steps at 256 px in bench/results/cpu.md (no SDXL fit row
# yet). The demo base (builtin:shapes, "tiny" by its size) has its own work profile: a 4× VAE and a wider UNet
# than the test model (its fit row: the demo preset).
CPU_GFLOP_PER_LATENT_PX = {"sd1": 0.420, "sd2": 0.42, "sdxl": 1.26, "tiny": 0.00434, "shapes": 0.0096}
# Self-attention grows with the square of the tokens (one token per latent pixel at the UNet's top level, a
# quarter per level down): its score matrices hold, per image, this many × latent_px² elements (the sum over
# self-attention layers of heads ÷ 16^level, from the bundled configs). On a CPU each element costs far more
# than its multiply-adds (softmax and memory traffic): CPU_GFLOP_PER_ATTN_SCORE is that cost in calibrate's
# units, forward + backward. It adds about a fifth to SD1.5's step at 512 px. Fitted on the tiny model when its
# VAE downsampled by 2 (32×32 latents, where attention decided its steps); at its 8× latents now it is too small
# a part of a tiny step to fit again, so it is kept.
ATTN_SCORES_PER_LATENT_PX2 = {"sd1": 8 * (5 + 5 / 16 + 5 / 256), "sd2": 5 * 5 + 10 * 5 / 16 + 20 * 5 / 256,
                              "sdxl": 10 * 10 / 16 + 20 * 60 / 256, "tiny": 4 * 3, "shapes": 2 * 3 + 4 * 4 / 16}
CPU_GFLOP_PER_ATTN_SCORE = 6.2e-7
# a step's fixed work, whatever its size (hundreds of small kernels, the optimizer over every adapter
# tensor, bookkeeping): it decides small models' steps (the two tiny fit rows give it with tiny's per-pixel work)
CPU_STEP_FIXED_GFLOP = 1.5
# the image cache: VAE encoder (and text encoders) once per image, per image pixel, same units (cpu.md's
# caches over the calibration then; the fit rows found their caches already on disk). Tiny's 8× VAE encodes so
# little that the tiny rows' first-use steps show no trace of it (2026-12-01): a bound, not a fit
CPU_CACHE_GFLOP_PER_IMAGE_PX = {"sd1": 1.3e-3, "sd2": 1.3e-3, "sdxl": 2.4e-3, "tiny": 5e-5,
                                "shapes": 4e-4}  # the demo row (its 4× VAE)
# a preview image's VAE decode, per image pixel: SD1.5's decoder at 256 px took 17.8 s at 26.4 GFLOP/s
# (estimate_accuracy's sd15-256 row, from its progress events); SD2 and SDXL decode with the same VAE shape
CPU_DECODE_GFLOP_PER_IMAGE_PX = {"sd1": 7.2e-3, "sd2": 7.2e-3, "sdxl": 7.2e-3, "tiny": 1e-4, "shapes": 1e-4}
# without a calibration: the idle 2-core machine of this project's kind whose SD1.5 step at 256 px took 3.6–4.1 s
NOMINAL_CPU_GFLOPS = 36.0
# a save: the resumable state (adapter + optimizer moments) and the adapter file, written and fsynced
SAVE_FIXED_S = 0.2
# a validation folder's size is not known before the run reads it: taken as a typical hold-out
VALIDATION_FOLDER_IMAGES = 4
SAVE_BYTES_PER_S = 200e6
CPU_CALIBRATION = ("memory measured on this project's 2-core machines; speed for an idle machine of that kind "
                   "(not measured on this one: a busy machine is several times slower)")

# ---- CUDA figures (public, unmeasured here)
CUDA_CONTEXT_BYTES = 0.6e9
CUDA_ACT_BYTES_PER_LATENT_PX = {"sd1": 0.6e6, "sd2": 0.6e6, "sdxl": 0.9e6, "tiny": 1.0e4}  # fp16/bf16
CUDA_S_PER_LATENT_PX = {"sd1": 3.2e-5, "sd2": 3.2e-5, "sdxl": 3.7e-5, "tiny": 1.0e-7}      # fp16/bf16
CUDA_STEP_OVERHEAD_S = 0.02
CUDA_CACHE_S_PER_IMAGE_PX = 8e-8  # a VAE encode of a 512² image ≈ 20 ms
CUDA_FP32_SLOWDOWN = 2.5
CUDA_CALIBRATION = "unmeasured: public figures for a 24 GB consumer GPU (RTX 4090 class)"

GC_MEMORY_FACTOR = 0.55   # diffusers checkpoints per block: SD1.5 512 px 3.3 -> 1.9 GB activations (measured on the 2-core machine)
# on GPUs the public figures show a bigger saving (SDXL 1024 px LoRA: ~24 GB without, fits 12 GB with)
GC_MEMORY_FACTOR_CUDA = 0.25
GC_TIME_FACTOR = 1.3      # one extra forward per block (measured: 4.1 -> 4.6 s/step at 256 px, 11-13 -> 16 at 512)
# optimizer state bytes per trainable parameter, beside the fp32 weight and its fp32 gradient
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "lion": 4, "adafactor": 4}


def _family_from_files(spec: str) -> str | None:
    """The family of a local checkpoint, by the loader's own detector (trainer.models.detect: tensor
    names and shapes from the safetensors header, or the diffusers configs; no tensor is loaded). A
    diffusers folder whose UNet is narrower than SD1's is a small test model: "tiny"."""
    import json
    from pathlib import Path

    from trainer.models.detect import FamilyDetectionError, detect_family, detect_family_from_folder, \
        header_keys_and_shapes

    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            width = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8")).get("cross_attention_dim")
            width = width[0] if isinstance(width, list) else width
            if width and width < 768:
                return "tiny"
            return detect_family_from_folder(path)[0]
        if path.suffix == ".safetensors" and path.is_file():
            return detect_family(header_keys_and_shapes(path)[0])
    except (FamilyDetectionError, OSError, ValueError):
        return None
    return None


def family_of(cfg, family: str | None = None) -> str:
    """The estimate's family: the argument, else the config's, else what the base spec names."""
    if family:
        return "sd2" if family == "sd2-v" else family
    if cfg.model.family != "auto":
        return "sd2" if cfg.model.family == "sd2-v" else cfg.model.family
    from trainer.models.spec import parse_base

    parsed = parse_base(cfg.model.base)
    if parsed.bundled:
        return "tiny"
    if parsed.kind == "random":
        return "sd2" if parsed.family == "sd2-v" else parsed.family
    spec = cfg.model.base.lower()
    from_weights = _family_from_files(cfg.model.base)
    if from_weights:
        return from_weights
    if "xl" in spec:
        return "sdxl"
    if "v2" in spec or "sd2" in spec or "2-1" in spec or "2.1" in spec:
        return "sd2"
    return "sd1"


def pick_device(cfg, device: str | None = None) -> str:
    """The trainer's rule (trainer.train.device), probed without importing torch."""
    from trainer.train.device import DeviceUnavailable, choose_device, probe_without_torch

    try:
        return choose_device(device or cfg.precision.device, *probe_without_torch())
    except DeviceUnavailable:
        return "cuda"  # estimate what was asked for; the trainer refuses it at start


def trainable_params(cfg, family: str) -> int:
    fp, net = FAMILY_PARAMS[family], cfg.network
    n = 0
    if net.train_unet:
        n += net.rank * fp["unet_lora_io"]
        if net.conv:
            n += net.conv_rank * fp["conv_lora_io"]
    if net.train_text_encoder:
        n += net.rank * sum(fp["te_lora_io"])
    if net.algo in ("loha",):  # two low-rank pairs per module
        n *= 2
    return n


def preview_count(cfg) -> int:
    """How many preview images a run draws: at the start (twice with the base comparison, unless the
    adapter still equals the base), every every_n_steps before the end, and at the end; each is one image
    per prompt."""
    sm, steps = cfg.sampling, cfg.schedule.max_train_steps
    prompts = preview_plan(cfg).prompts  # a family preset's style fills them in when the config sets none
    if not prompts:
        return 0
    rounds = (2 if sm.with_base and not adapter_starts_at_base(cfg) else 1) * bool(sm.at_start) + 1
    if sm.every_n_steps:
        rounds += (steps - 1) // sm.every_n_steps
    return rounds * len(prompts)


def cache_seconds(cfg, fam: str, dev: str, num_images: int | None, cpu_gflops: float) -> float:
    """Encoding the image cache: each image (and regularisation image) once; 0 without a latent cache."""
    ds = cfg.dataset
    if not num_images or not ds.cache_latents:
        return 0.0
    image_px = num_images * (2 if ds.reg_path else 1) * ds.resolution ** 2
    return image_px * (CUDA_CACHE_S_PER_IMAGE_PX if dev == "cuda" else CPU_CACHE_GFLOP_PER_IMAGE_PX[fam] / cpu_gflops)


def save_count(cfg) -> int:
    """How many times a run saves (state + adapter): every saving.every_n_steps before the end, and at the end."""
    from trainer.train.timing import due_after  # the trainer's own count (torch-free)

    return due_after(0, cfg.schedule.max_train_steps, cfg.saving.every_n_steps)


def validation_count(cfg) -> int:
    """How many times a run measures its validation loss (trainer.train.validation): at step 0, at each save
    (the last one at the end), and every validation.every_n_steps that is no save step; 0 when it is off."""
    from math import lcm

    v, steps, save_every = cfg.validation, cfg.schedule.max_train_steps, cfg.saving.every_n_steps
    if not v.enabled:
        return 0
    extra = 0
    if v.every_n_steps:
        extra = (steps - 1) // v.every_n_steps - ((steps - 1) // lcm(v.every_n_steps, save_every) if save_every else 0)
    return 1 + save_count(cfg) + extra


def validation_images(cfg, num_images: int | None) -> int:
    """Held-out images (validation.split of the dataset; a validation folder counts as VALIDATION_FOLDER_IMAGES
    when its size is not known here)."""
    v = cfg.validation
    if v.path:
        return VALIDATION_FOLDER_IMAGES
    if v.split <= 0 or not num_images:
        return 0
    return min(num_images - 1, max(1, round(v.split * num_images)))


def loftq_setup_seconds(cfg, family: str) -> float:
    """Seconds LoftQ spends before step 1 (0 without it): every adapted 4-bit Linear's randomised SVD."""
    net = cfg.network
    if not (net.loftq and net.quantize_base == "nf4"):
        return 0.0
    lp = LINEAR_PARAMS[family]
    weights = (lp["unet"] if net.train_unet else 0) + (sum(lp["text"]) if net.train_text_encoder else 0)
    return weights * ((net.rank + LOFTQ_OVERSAMPLE) * LOFTQ_S_PER_WEIGHT_DIRECTION + LOFTQ_S_PER_WEIGHT)


def work_key(cfg, fam: str) -> str:
    """Which CPU work profile a config's base has: its family's, or the bundled demo base's own."""
    if fam != "tiny":
        return fam
    from trainer.models.spec import parse_base

    return "shapes" if parse_base(cfg.model.base).kind == "builtin" else fam


def cpu_work_per_image(fam: str, latent_px: float) -> float:
    """A training step's work per image on a CPU, in calibrate's GFLOP: convolutions and projections grow with
    the latent pixels, attention scores with their square."""
    return latent_px * CPU_GFLOP_PER_LATENT_PX[fam] + latent_px ** 2 * ATTN_SCORES_PER_LATENT_PX2[fam] * CPU_GFLOP_PER_ATTN_SCORE


def preview_image_seconds(cfg, fam: str, dev: str, step_s_per_image: float, cpu_gflops: float) -> float:
    """One preview image: sampling.steps UNet forwards (two under classifier-free guidance), a forward being
    a third of a training step's forward + backward (its fixed part too: a forward runs the same small kernels),
    and, on a CPU, the VAE decode (about as long as a training step of one image at that size)."""
    size, res = preview_plan(cfg).size, cfg.dataset.resolution
    forwards = cfg.sampling.steps * (2 if cfg.sampling.guidance_scale > 1 else 1)
    if dev == "cuda":
        return forwards * step_s_per_image / 3 * (size / res) ** 2
    latent_px = (size // VAE_DOWNSCALE.get(fam, 8)) ** 2
    forward = (CPU_STEP_FIXED_GFLOP + cpu_work_per_image(fam, latent_px)) / 3
    return (forwards * forward + size ** 2 * CPU_DECODE_GFLOP_PER_IMAGE_PX[fam]) / cpu_gflops


def epochs_of(cfg, num_images: int | None, num_views: int | None) -> tuple[int | None, int | None]:
    """(epochs, batches per epoch) of the run, or (None, None) without a dataset size."""
    if not num_images:
        return None, None
    samples = num_views or num_images * cfg.dataset.repeats
    if cfg.dataset.reg_path:  # as many regularisation samples as training samples per epoch (kohya's rule)
        samples *= 2
    batches_per_epoch = max(1, math.ceil(samples / cfg.dataset.batch_size))
    return math.ceil(cfg.schedule.max_train_steps * cfg.schedule.grad_accum / batches_per_epoch), batches_per_epoch


def _activation_bytes(fam: str, dev: str, half: bool, gc: bool, batch_latent_px: int) -> float:
    """A step's activations: measured bytes per latent pixel of the batch (fp32 on CUDA: twice the half)."""
    act_table = CUDA_ACT_BYTES_PER_LATENT_PX if dev == "cuda" else CPU_ACT_BYTES_PER_LATENT_PX
    gc_factor = GC_MEMORY_FACTOR_CUDA if dev == "cuda" else GC_MEMORY_FACTOR
    act = batch_latent_px * act_table[fam] * (gc_factor if gc else 1.0)
    return act * 2 if dev == "cuda" and not half else act


def _step_seconds(cfg, fam: str, wk: str, dev: str, half: bool, latent_px: int, cpu_gflops: float) -> float:
    """One optimizer step (grad_accum micro-batches): measured seconds per latent pixel on CUDA, the
    work model over this machine's GFLOP/s on a CPU."""
    batch = cfg.dataset.batch_size
    if dev == "cuda":
        s = CUDA_STEP_OVERHEAD_S + batch * latent_px * CUDA_S_PER_LATENT_PX[fam] * (1 if half else CUDA_FP32_SLOWDOWN)
    else:
        s = (CPU_STEP_FIXED_GFLOP + batch * cpu_work_per_image(wk, latent_px)) / cpu_gflops
    if cfg.precision.gradient_checkpointing:
        s = CUDA_STEP_OVERHEAD_S + (s - CUDA_STEP_OVERHEAD_S) * GC_TIME_FACTOR if dev == "cuda" else s * GC_TIME_FACTOR
    s *= cfg.schedule.grad_accum
    if not cfg.dataset.cache_latents:  # the VAE encoder runs each step: roughly a third of a UNet step
        s *= 1.35
    return s


def estimate(cfg, num_images: int | None = None, family: str | None = None, device: str | None = None,
             num_views: int | None = None, speed: dict | None = None) -> dict:
    """Predicted steps, epochs, peak memory, seconds per step and preview seconds of training `cfg`.

    num_images: training images in the dataset; num_views: image views per epoch (each image counted by
    its folder's repeats), by default num_images × dataset.repeats. Epochs = steps × grad_accum over the
    batches per epoch.
    family: sd1 / sd2 / sdxl / tiny (default: from the config). device: cpu / cuda (default: the config's,
    auto = cuda when an NVIDIA device is present). Memory is peak RSS on CPU, peak VRAM on CUDA.
    speed: this machine's measured speed (trainer.calibrate: {"gflops": …}); without it a CPU is taken
    to be an idle one of this project's kind."""
    fam = family_of(cfg, family)
    if fam not in FAMILY_PARAMS:
        raise ValueError(f"unknown family {fam!r}; expected one of {sorted(FAMILY_PARAMS)}")
    dev = pick_device(cfg, device)
    fp = FAMILY_PARAMS[fam]
    ds, sch = cfg.dataset, cfg.schedule
    batch, steps = ds.batch_size, sch.max_train_steps
    epochs, batches_per_epoch = epochs_of(cfg, num_images, num_views)

    wk = work_key(cfg, fam)
    latent_px = (ds.resolution // VAE_DOWNSCALE.get(wk, 8)) ** 2
    # the trainer's precision rule (on a CPU: bf16 only where it is native, or forced); CPU time and
    # activations stay the measured fp32 figures: no native-bf16 CPU has been measured here
    used, _ = choose_precision(dev, cfg.precision.mixed_precision, cfg.precision.cpu_bf16,
                               cpu_native=dev == "cpu" and native_cpu_bf16())
    half = used != "fp32"
    weight_bytes = 2 if half else FP32
    text = SPEC_TEXT_PARAMS.get(cfg.model.base.lower(), fp["text"])
    n_base = fp["unet"] + fp["vae"] + sum(text)
    gc = cfg.precision.gradient_checkpointing
    n_train = trainable_params(cfg, fam)
    opt_bytes = OPTIMIZER_STATE_BYTES.get(cfg.optimizer.name, 8)

    cpu_gflops = float(speed["gflops"]) if dev == "cpu" and speed and speed.get("gflops") else NOMINAL_CPU_GFLOPS
    act = _activation_bytes(fam, dev, half, gc, batch * latent_px)
    breakdown = {
        "base_weights": n_base * weight_bytes,
        "adapter_and_optimizer": n_train * (FP32 + FP32 + opt_bytes),
        "activations": act,
        "process": CUDA_CONTEXT_BYTES if dev == "cuda" else CPU_PROCESS_BYTES,
    }
    peak = sum(breakdown.values())
    s = _step_seconds(cfg, fam, wk, dev, half, latent_px, cpu_gflops)
    measured = dev == "cpu"
    calibrated = measured and cpu_gflops != NOMINAL_CPU_GFLOPS
    # a preview is sampling.steps UNet forwards of one image (two under classifier-free guidance); a
    # forward is about a third of a training step's forward + backward, per image of the batch
    n_previews = preview_count(cfg)
    preview_s = n_previews * preview_image_seconds(cfg, wk, dev, s / sch.grad_accum / batch, cpu_gflops)
    loftq_s = loftq_setup_seconds(cfg, fam)
    cache_s = cache_seconds(cfg, wk, dev, num_images, cpu_gflops)
    saves = save_count(cfg)
    save_s = saves * (SAVE_FIXED_S + n_train * (FP32 + opt_bytes + 2) / SAVE_BYTES_PER_S)
    # each validation: a forward (no backward: a third of a step) per held-out image and timestep, twice
    # once the EMA's weights are measured too
    forward_s = s / sch.grad_accum / batch / 3
    validations = validation_count(cfg)
    validation_s = (validations * validation_images(cfg, num_images) * cfg.validation.timesteps * forward_s
                    * (2 if cfg.optimizer.ema else 1))
    calibration = (f"memory measured on this project's machines; speed from this machine's {cpu_gflops:.1f} "
                   f"GFLOP/s, measured now") if calibrated else CPU_CALIBRATION if measured else CUDA_CALIBRATION
    return {
        "family": fam, "device": dev, "dtype": used,
        "steps": steps, "epochs": epochs, "batches_per_epoch": batches_per_epoch,
        "trainable_params": n_train,
        "peak_memory_bytes": int(peak), "memory_kind": "vram" if dev == "cuda" else "rss",
        "memory_breakdown": {k: int(v) for k, v in breakdown.items()},
        "seconds_per_step": s, "train_seconds": s * steps, "previews": n_previews, "preview_seconds": preview_s,
        "loftq_setup_seconds": loftq_s, "cache_seconds": cache_s, "saves": saves, "save_seconds": save_s,
        "validations": validations, "validation_seconds": validation_s,
        "total_seconds": s * steps + preview_s + loftq_s + cache_s + save_s + validation_s,
        "measured": measured, "calibrated": calibrated, "calibration": calibration,
    }


def _span(seconds: float) -> str:
    mins = seconds / 60
    return f"{mins / 60:.1f} h" if mins >= 90 else f"{mins:.0f} min" if mins >= 1 else f"{seconds:.0f} s"


def format_estimate(e: dict) -> str:
    """One line for the GUI: '≈ 4.6 GB RAM, 3.9 s/step, 1000 steps ≈ 65 min + 12 previews ≈ 2 min (10 epochs)'.
    The epochs are said here once (the GUI does not repeat them)."""
    epochs = f" ({e['epochs']} epochs)" if e["epochs"] else ""
    flag = "" if e["measured"] else " (GPU figures unmeasured)"
    kind = "VRAM" if e["memory_kind"] == "vram" else "RAM"
    previews = f" + {e['previews']} previews ≈ {_span(e['preview_seconds'])}" if e.get("previews") else ""
    extra = (e.get("cache_seconds", 0) + e.get("save_seconds", 0) + e.get("loftq_setup_seconds", 0)
             + e.get("validation_seconds", 0))
    what = "encoding, saving and validation" if e.get("validations") else "encoding and saving"
    total = f"; ≈ {_span(e['total_seconds'])} in all with {what}" if extra >= 1 else ""
    return (f"≈ {e['peak_memory_bytes'] / 1e9:.1f} GB {kind}, {e['seconds_per_step']:.2f} s/step, "
            f"{e['steps']} steps ≈ {_span(e['train_seconds'])}{previews}{total}{epochs}{flag}")
