"""From a training run to the kohya/Civitai adapter file: gather the run's facts, then hand them to
trainer.formats, which owns key names, metadata and hashes."""
from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import torch

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def free_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    """<stem>.safetensors, or <stem>-2… when a file of that name exists: never write over an adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def _thumbnail(trainer) -> bytes | None:
    samples = sorted(trainer.paths.samples.glob("step*_p0.png")) if trainer.paths.samples.exists() else []
    if not samples:
        return None
    from PIL import Image

    with Image.open(samples[-1]) as im:
        im = im.convert("RGB")
        im.thumbnail((256, 256))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def run_facts(trainer) -> dict:
    """What the metadata builders need (see trainer.formats.metadata), as plain values: folder names,
    never absolute paths."""
    ds = trainer.dataset
    p = trainer.progress
    batches_per_epoch = max(1, len(ds.epoch_batches(0)) // trainer.world)
    if not hasattr(trainer, "session_id"):
        trainer.session_id = str(uuid.uuid4().int % 2**31)
    sched = trainer.cfg.schedule
    from trainer.formats.expected import custom_base_label

    return {
        "family": trainer.base.family,
        "custom_base": custom_base_label(trainer.base, trainer.cfg.model.base),
        "prediction_type": trainer.base.prediction_type,
        "base_name": trainer.base.name,
        "base_hash": trainer.base.model_hash,
        "folders": ds.folders,
        "reg_folders": ds.reg_folders,
        "tag_frequency": ds.tag_frequency,
        "bucket_info": ds.bucket_info,
        "num_images": sum(f["img_count"] * f["n_repeats"] for f in ds.folders.values()),
        "num_reg_images": ds.num_reg_images,
        "batches_per_epoch": batches_per_epoch,
        "num_epochs": -(-sched.max_train_steps * sched.grad_accum // batches_per_epoch),
        "steps": p.step,
        "epochs": p.epoch,
        "started_at": p.started_at,
        "finished_at": time.time(),
        "session_id": trainer.session_id,
        "thumbnail_png": _thumbnail(trainer),
    }


def export_adapter(trainer, out_dir: Path, stem: str) -> Path:
    from trainer.formats.metadata import build_metadata
    from trainer.formats.save import save_adapter

    cfg = trainer.cfg
    metadata = build_metadata(cfg, run_facts(trainer), minimal=cfg.saving.minimal_metadata)
    path = free_path(out_dir, stem)
    result = save_adapter(path, trainer.base, trainer.network, metadata, SAVE_DTYPES[cfg.saving.precision])
    return Path(result.path)
