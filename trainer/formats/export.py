"""From a training run to the kohya/Civitai adapter file: a small record of the run's facts, handed
with the network to trainer.formats, which owns key names, metadata and hashes."""
from __future__ import annotations

import io
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class RunFacts:
    """What an adapter file records about its run (see trainer.formats.metadata): plain values, folder
    names, never absolute paths. `steps` and `epochs` are updated at each save."""
    family: str
    prediction_type: str
    base_name: str
    base_hash: str
    folders: dict
    reg_folders: dict
    tag_frequency: dict
    bucket_info: dict
    num_images: int
    num_reg_images: int
    batches_per_epoch: int
    num_epochs: int
    started_at: float
    samples_dir: Path  # where the previews are (the newest first prompt becomes the thumbnail)
    steps: int = 0
    epochs: int = 0
    zero_terminal_snr: bool = False
    custom_base: str | None = None  # the base spec when it is not a standard SD family (demo, tiny)
    masked_images: int = 0  # training images with a mask, when trained with masked loss
    mixed_precision: str | None = None  # what it trained in ("no" = fp32, "bf16", "fp16"), not what was asked
    compiled: bool = False  # the UNet ran under torch.compile
    session_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 2**31))

    @classmethod
    def of_run(cls, cfg, base, dataset, world: int, started_at: float, samples_dir: Path,
               mixed_precision: str | None = None) -> "RunFacts":
        from trainer.formats.expected import custom_base_label  # loads the key tables: only when exporting

        batches_per_epoch = max(1, len(dataset.epoch_batches(0)) // world)
        sched = cfg.schedule
        return cls(family=base.family, prediction_type=base.prediction_type, base_name=base.name,
                   base_hash=base.model_hash, folders=dataset.folders, reg_folders=dataset.reg_folders,
                   tag_frequency=dataset.tag_frequency, bucket_info=dataset.bucket_info,
                   num_images=sum(f["img_count"] * f["n_repeats"] for f in dataset.folders.values()),
                   num_reg_images=dataset.num_reg_images, batches_per_epoch=batches_per_epoch,
                   num_epochs=-(-sched.max_train_steps * sched.grad_accum // batches_per_epoch),
                   started_at=started_at, samples_dir=Path(samples_dir), zero_terminal_snr=base.zero_terminal_snr,
                   custom_base=custom_base_label(base, cfg.model.base), masked_images=dataset.num_masked_images,
                   mixed_precision=mixed_precision, compiled=cfg.precision.compile)

    def for_metadata(self) -> dict:
        facts = {k: v for k, v in asdict(self).items() if k != "samples_dir"}
        return {**facts, "finished_at": time.time(), "thumbnail_png": _thumbnail(self.samples_dir)}


def free_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    """<stem>.safetensors, or <stem>-2… when a file of that name exists: never write over an adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def _thumbnail(samples_dir: Path) -> bytes | None:
    samples = sorted(samples_dir.glob("step*_p0.png")) if samples_dir.exists() else []
    if not samples:
        return None
    from PIL import Image

    with Image.open(samples[-1]) as im:
        im = im.convert("RGB")
        im.thumbnail((256, 256))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def export_adapter(cfg, facts: RunFacts, base, network, out_dir: Path, stem: str, ema: dict | None = None) -> Path:
    """The adapter in `base` as <stem>.safetensors (or a free variant of the name) in out_dir. ema: the
    moving average's settings when the weights in `base` are the EMA (the metadata says so)."""
    from trainer.formats.metadata import build_metadata, mark_ema
    from trainer.formats.save import save_adapter

    metadata = build_metadata(cfg, facts.for_metadata(), minimal=cfg.saving.minimal_metadata)
    if ema is not None:
        metadata = mark_ema(metadata, ema, minimal=cfg.saving.minimal_metadata)
    path = free_path(out_dir, stem)
    result = save_adapter(path, base, network, metadata, SAVE_DTYPES[cfg.saving.precision])
    return Path(result.path)
