"""The set-up before the first step, stage by stage: device and precision, data, the model and where
its parts live, the adapter network, the training toggles (gradient checkpointing, attention), the disk
check and the optimizer (the caches: trainer.train.caching). Each stage is a function the Trainer calls in order."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch

from trainer.config import TrainConfig

Warn = Callable[..., None]


class TrainingError(RuntimeError):
    """A failure to report to the user as-is (names the file or option at fault)."""


# ---------------------------------------------------------------- device and precision

def pick_device(cfg: TrainConfig) -> str:
    from trainer.train.device import DeviceUnavailable, choose_device, probe_torch

    try:
        return choose_device(cfg.precision.device, *probe_torch())
    except DeviceUnavailable as e:
        raise TrainingError(str(e)) from None


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """The CPU's own word: its /proc/cpuinfo flags, or torch's probe where there is no /proc (Windows, macOS;
    private in torch 2.13, hence looked up with a default)."""
    from trainer.train.device import native_cpu_bf16

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return native_cpu_bf16() or any(bool(probe()) for probe in probes if probe is not None)


def precision_for(cfg: TrainConfig, device: str) -> tuple[torch.dtype, str]:
    """(the dtype the frozen UNet and text encoders are stored and run in under autocast, why it is not what
    precision.mixed_precision asked for or ""): trainer.train.device.choose_precision with what torch reports."""
    from trainer.train.device import choose_precision

    kind = device.split(":")[0]
    name, why = choose_precision(device, cfg.precision.mixed_precision, cfg.precision.cpu_bf16,
                                 cpu_native=kind == "cpu" and cpu_has_native_bf16(),
                                 cuda_bf16=kind == "cuda" and torch.cuda.is_bf16_supported())
    return DTYPES[name], why


def precision_name(dtype: torch.dtype) -> str:
    """The kohya name of a run's precision (ss_mixed_precision): "no" for fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def autocast_for(device: str, dtype: torch.dtype):
    """Mixed-precision context for a device string like "cuda:1"; a no-op in fp32."""
    if dtype == torch.float32:
        return torch.autocast(device_type="cpu", enabled=False)
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


# ---------------------------------------------------------------- data and model

def load_data(cfg: TrainConfig, root: Path, warn: Warn | None = None):
    """(training dataset, validation dataset or None); fails in seconds on a bad folder, before the model
    loads. The validation images (a held-out share, or a separate folder) are never in the training set."""
    from trainer.data.dataset import TrainDataset
    from trainer.data.scan import DatasetError, scan_dataset
    from trainer.train.validation import hold_out, validation_scan, without

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (root / path if (root / path).exists() else Path.cwd() / path)

    if not cfg.dataset.path:
        raise TrainingError("dataset.path is empty: point it at a folder of images")
    try:
        scan = scan_dataset(resolve(cfg.dataset.path), cfg.dataset.caption_extension, cfg.dataset.repeats)
        reg = None
        if cfg.dataset.reg_path:
            reg = scan_dataset(resolve(cfg.dataset.reg_path), cfg.dataset.caption_extension, 1, is_reg=True)
        val = cfg.validation
        scan, held = hold_out(scan, val.split, val.seed)
        if val.path:
            held = scan_dataset(resolve(val.path), cfg.dataset.caption_extension, 1)
            scan, dropped = without(scan, held)
            if dropped and warn is not None:
                warn(f"{dropped} training image(s) are also in the validation folder: they are not trained on")
            if not scan.items:
                raise TrainingError(f"every image of {cfg.dataset.path} is in the validation folder {val.path}: "
                                    "nothing left to train on")
    except (DatasetError, ValueError) as e:
        raise TrainingError(str(e)) from None
    train = TrainDataset(scan, cfg.dataset, cfg.schedule.seed, reg_scan=reg, masked_loss=cfg.noise.masked_loss)
    for p in train.problems if warn is not None else ():
        warn(f"{p.file}: {p.reason}", file=p.file, severity=p.severity)
    if cfg.noise.masked_loss and not train.num_masked_images and warn is not None:
        warn("masked loss is on but no training image has a mask (<name>_mask.png beside it, or transparency): "
             "every pixel is trained")
    if held is None:
        return train, None
    # measured as they are: no flip, tag shuffle or caption dropout (a fixed caption each)
    plain = cfg.dataset.model_copy(update={"flip": False, "shuffle_caption": False, "caption_dropout": 0.0})
    return train, TrainDataset(validation_scan(held), plain, val.seed)


def model_and_adapter(cfg: TrainConfig, root: Path, device: str, dtype: torch.dtype, warn: Warn):
    """(the base, placed and frozen; its adapter network, with the training toggles applied), once the disk
    has room for the run's saves."""
    base = load_model(cfg)
    place_model(base, device, dtype)
    network = build_adapter(base, cfg, warn)
    apply_toggles(base, network, cfg, warn)
    check_disk(root, sum(p.numel() for p in network.all_params()), cfg)
    return base, network


def load_model(cfg: TrainConfig):
    from trainer.models.resolve import load_any

    return load_any(cfg.model.base, family=cfg.model.family, prediction_type=cfg.model.prediction_type,
                    vae=cfg.model.vae, zero_terminal_snr=cfg.model.zero_terminal_snr)


def place_model(base, device: str, dtype: torch.dtype) -> None:
    """Freeze the base and move it: UNet and text encoders in the weight dtype, the VAE in fp32 (SDXL's
    VAE overflows in fp16, giving NaN latents; with caching it runs once)."""
    for m in [base.unet, base.vae, *base.text_encoders]:
        m.requires_grad_(False)
    base.vae.to(device)
    for m in [base.unet, *base.text_encoders]:
        m.to(device) if dtype == torch.float32 else m.to(device, dtype)


def build_adapter(base, cfg: TrainConfig, warn: Warn):
    """Inject the network; trainable weights stay fp32 even under mixed precision."""
    from trainer.adapter.network import build_network

    network = build_network(base, cfg.network, total_steps=cfg.schedule.max_train_steps,
                            clip_skip=cfg.model.clip_skip)
    for p in network.all_params():
        p.data = p.data.float()
    kept = getattr(network.quant, "kept_linear", 0)
    if kept:
        warn(f"{kept} Linear layers stay in full precision: bitsandbytes' 4-bit CPU kernel needs in_features "
             "divisible by 64 and out_features by 32 (every layer of a real SD model fits)", kept_linear=kept)
    if cfg.network.init_weights:
        from trainer.formats.kohya_import import load_kohya_into

        load_kohya_into(base, Path(cfg.network.init_weights))
    return network


def apply_toggles(base, network, cfg: TrainConfig, warn: Warn) -> None:
    if cfg.precision.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        for i in network.text_encoders:
            base.text_encoders[i].gradient_checkpointing_enable()
    if cfg.precision.attention == "xformers":
        try:
            base.unet.enable_xformers_memory_efficient_attention()
        except Exception as e:
            warn(f"xformers unavailable ({e}); using PyTorch SDPA")


def compile_unet(unet_fwd):
    """torch.compile of the UNet as the step calls it. It compiles on its first call (the first step waits),
    where a backend failure (no C compiler, a graph it cannot build) becomes an error naming the option.
    Only the step's handle is compiled: base.unet stays the plain module, so its state dict (saving,
    export, resuming) has no `_orig_mod.` prefix, and previews and validation run it eagerly."""
    from torch._dynamo.exc import BackendCompilerFailed

    # static shapes: a new shape (another bucket, a smaller last batch) compiles once more rather than
    # turning symbolic, where torch 2.13's CPU inductor failed on the demo base ("cannot determine truth
    # value of Relational"); past torch's recompile limit a shape runs eagerly
    compiled = torch.compile(unet_fwd, dynamic=False)

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except BackendCompilerFailed as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(f"precision.compile: torch.compile could not compile the UNet ({first}); "
                                "set precision.compile = false to train without it") from None

    return forward


def check_disk(root: Path, n_params: int, cfg: TrainConfig) -> None:
    saves = 1 + (cfg.schedule.max_train_steps // cfg.saving.every_n_steps if cfg.saving.every_n_steps else 0)
    # adapter (fp16) per save, plus states (fp32 weights + 2 optimizer moments) for the kept ones
    need = n_params * 2 * saves + n_params * 12 * (cfg.saving.keep_last + 1) + (64 << 20)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need:
        raise TrainingError(f"not enough free disk in {root.name}: need about "
                            f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")


def build_optimizer_and_schedule(cfg: TrainConfig, network):
    from trainer.train.optim import build_lr_scheduler, build_optimizer

    optimizer = build_optimizer(cfg.optimizer, network.params_unet, network.params_te)
    return optimizer, build_lr_scheduler(cfg.schedule, optimizer)


def started_fields(cfg: TrainConfig, base, dataset, network, device: str, dtype: torch.dtype, precision_note: str,
                   resumed_from: int, startup_s: float) -> dict:
    """The `started` event's payload: what the run trains, on what, in which precision, and its set-up time."""
    return dict(max_steps=cfg.schedule.max_train_steps, family=base.family, device=device,
                dtype=str(dtype).replace("torch.", ""), precision=precision_name(dtype), precision_note=precision_note,
                compiled=cfg.precision.compile, images=dataset.num_images, resumed_from=resumed_from,
                masked_loss=cfg.noise.masked_loss, masked_images=dataset.num_masked_images,
                crop_boxes=dataset.crop_counts["box"], focus_points=dataset.crop_counts["focus"],
                trainable_params=sum(p.numel() for p in network.all_params()), startup_s=round(startup_s, 2))
