"""Header metadata of an adapter: sd-scripts' ss_* set and ModelSpec 1.0.1 (docs/adapter-format.md).

`build_metadata(cfg, facts, minimal)` turns the run's config and a plain dict of facts into the
string→string header. Facts the training loop passes (all optional except family):

    family            "sd1" | "sd2" | "sd2-v" | "sdxl"
    prediction_type   "epsilon" | "v_prediction" (default: from family)
    zero_terminal_snr True when trained on a zero-terminal-SNR schedule (ss_zero_terminal_snr, as sd-scripts)
    base_name         base model file/folder name (reduced to its last path component)
    base_hash         sha256 / sshs hash of the base file (ss_new_sd_model_hash)
    base_legacy_hash  A1111's old short hash of the base (ss_sd_model_hash)
    folders           {folder: {"n_repeats": N, "img_count": M}}  (folder names only)
    reg_folders       same, for regularisation images
    tag_frequency     {folder: {tag: images containing it}}
    bucket_info       {"buckets": {...}, "mean_img_ar_error": x} or None
    num_images        training images × repeats (ss_num_train_images)
    num_reg_images, batches_per_epoch, num_epochs (planned)
    masked_images     training images with a mask; with cfg.noise.masked_loss on, the header says so:
                      ss_masked_loss (sd-scripts' key), ss_unmasked_weight and MASKED_IMAGES_KEY
    mixed_precision   what the run trained in: "no" (fp32), "bf16" or "fp16" (ss_mixed_precision; default: the
                      config's request). A CPU without native bf16 trains fp32 although bf16 is asked for: the
                      header says what happened, and PRECISION_KEY what was asked and whether torch.compile ran
    compiled          True when the UNet ran under torch.compile
    steps             optimizer steps done;  epochs: epochs done
    started_at, finished_at   POSIX timestamps (float seconds)
    session_id        any string (default: random)
    thumbnail_png     preview image bytes (PNG or JPEG) → modelspec.thumbnail data: URL
    resolution        (width, height) (default: cfg.dataset.resolution squared)
    custom_base       None for a base of the standard architecture (real SD1.5/SD2/SDXL layer names and
                      shapes); else the base the adapter fits, e.g. "builtin:shapes": the file then claims no
                      sd_v1/SDXL version (no client model has its layers) and names that base in CUSTOM_BASE_KEY

No value may hold an absolute path or the user's name: builders keep folder names only, and
`privacy_problems` is checked again before anything is written.
"""
from __future__ import annotations

import base64
import getpass
import io
import json
import os
import random
import re
import time
from datetime import datetime, timezone
from pathlib import PurePosixPath, PureWindowsPath

MODELSPEC_VERSION = "1.0.1"
# what sd-scripts writes for a LoRA: the SGM repository for SDXL, "diffusers" for SD1.x/SD2.x
IMPLEMENTATION = {"sd1": "diffusers", "sd2": "diffusers", "sd2-v": "diffusers",
                  "sdxl": "https://github.com/Stability-AI/generative-models"}
# an adapter for a base of non-standard shape (the demo base, a tiny test model) says so instead of sd_v1
CUSTOM_VERSION = "custom"
CUSTOM_ARCHITECTURE = "custom/lora"
CUSTOM_BASE_KEY = "ss_atelier_base"  # the base such a file fits: a builtin:/tiny: spec or a folder name
MASKED_IMAGES_KEY = "ss_atelier_masked_images"  # how many training images had a mask (masked loss)
PRECISION_KEY = "ss_atelier_precision"  # {"used", "requested", "compiled"}: the precision asked for and used
ARCHITECTURE = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
                "sd2-v": "stable-diffusion-v2-768-v/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")
THUMBNAIL_MAX_BYTES = 256 * 1024
# the keys clients read; "minimal" metadata is these (no dataset, hyperparameters or timestamps)
CLIENT_KEYS = ("ss_base_model_version", "ss_v2", "ss_v_parameterization", "ss_output_name", "ss_sd_model_name",
               "ss_zero_terminal_snr", "ss_clip_skip", "ss_resolution", "ss_network_module", "ss_network_dim",
               "ss_network_alpha", "ss_network_args")


class MetadataError(ValueError):
    pass


def leaf_name(name: str) -> str:
    """The last component of a path in either OS's spelling: folder and model names only."""
    name = str(name).rstrip("/\\")
    return PureWindowsPath(PurePosixPath(name).name).name


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def _folders(folders: dict | None) -> dict:
    out = {}
    for name, info in (folders or {}).items():
        out[leaf_name(name)] = {"n_repeats": int(info.get("n_repeats", 1)), "img_count": int(info.get("img_count", 0))}
    return out


def _tag_frequency(freq: dict | None) -> dict:
    return {leaf_name(folder): {str(t): int(n) for t, n in tags.items()} for folder, tags in (freq or {}).items()}


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), tz=timezone.utc).isoformat(
        timespec="seconds")


def thumbnail_data_url(image: bytes) -> str:
    """A preview as a data: URL, re-encoded smaller when it is large (the header must stay well
    under the 1 MiB where sshs_legacy_hash starts reading)."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif image.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    else:
        raise MetadataError("thumbnail: not a PNG or JPEG image")
    if len(image) > THUMBNAIL_MAX_BYTES:
        from PIL import Image

        img = Image.open(io.BytesIO(image))
        img.thumbnail((256, 256))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        image, mime = buf.getvalue(), "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")


def custom_base(metadata: dict[str, str]) -> str | None:
    """The base a file says it alone fits (None: a standard SD1.5/SD2/SDXL architecture)."""
    if metadata.get("ss_base_model_version") == CUSTOM_VERSION or CUSTOM_BASE_KEY in metadata:
        return metadata.get(CUSTOM_BASE_KEY) or "an unnamed custom base"
    return None


def network_module_and_args(net) -> tuple[str, dict]:
    """(ss_network_module, ss_network_args) as sd-scripts / LyCORIS write them for this network."""
    args: dict[str, str] = {}
    if net.conv:
        args.update(conv_dim=str(net.conv_rank), conv_alpha=str(net.conv_alpha))
    if net.algo in ("loha", "lokr"):
        return "lycoris.kohya", {"algo": net.algo, **args}
    if net.use_dora:
        # LyCORIS' wd_on_output names the axis of dora_scale: True = per output row, False = per input column
        return "lycoris.kohya", {"algo": "lora", "dora_wd": "True",
                                 "wd_on_output": str(net.dora_axis == "out"), **args}
    if net.algo == "adalora":
        args.update(algo="adalora", target_rank=str(net.adalora_target_rank))
    return "networks.lora", args


def _modelspec(cfg, facts: dict, family: str, pred: str, res: tuple[int, int]) -> dict[str, str]:
    s = cfg.saving
    custom = facts.get("custom_base")
    m = {"modelspec.sai_model_spec": MODELSPEC_VERSION,
         "modelspec.architecture": CUSTOM_ARCHITECTURE if custom else ARCHITECTURE[family],
         "modelspec.implementation": "diffusers" if custom else IMPLEMENTATION[family],
         "modelspec.title": s.title or s.output_name,
         "modelspec.resolution": f"{res[0]}x{res[1]}",
         "modelspec.date": _iso(facts.get("finished_at") or facts.get("started_at")),
         "modelspec.prediction_type": "v" if pred == "v_prediction" else "epsilon"}
    for key, value in (("trigger_phrase", s.trigger_phrase), ("description", s.description),
                       ("author", s.author), ("license", s.license), ("tags", s.tags)):
        if value:
            m[f"modelspec.{key}"] = value
    if facts.get("thumbnail_png"):
        m["modelspec.thumbnail"] = thumbnail_data_url(facts["thumbnail_png"])
    return m


def build_metadata(cfg, facts: dict, minimal: bool = False) -> dict[str, str]:
    """The header for an adapter trained with `cfg` (trainer.config.TrainConfig); see the module doc
    for `facts`. The sshs hashes are added by save_adapter, on the bytes it writes."""
    family = facts.get("family")
    if family not in ARCHITECTURE:
        raise MetadataError(f"facts['family'] must be one of {sorted(ARCHITECTURE)}, not {family!r}")
    pred = facts.get("prediction_type") or ("v_prediction" if family == "sd2-v" else "epsilon")
    res = tuple(facts.get("resolution") or (cfg.dataset.resolution, cfg.dataset.resolution))
    net = cfg.network
    module, args = network_module_and_args(net)
    custom = facts.get("custom_base")
    precision_used = facts.get("mixed_precision") or cfg.precision.mixed_precision
    md: dict[str, str] = {
        "ss_base_model_version": CUSTOM_VERSION if custom else BASE_MODEL_VERSION[family],
        "ss_v2": str(family.startswith("sd2")),
        "ss_v_parameterization": str(pred == "v_prediction"),
        "ss_zero_terminal_snr": str(bool(facts.get("zero_terminal_snr"))),
        "ss_output_name": cfg.saving.output_name,
        "ss_sd_model_name": leaf_name(facts.get("base_name") or cfg.model.base),
        "ss_clip_skip": str(cfg.model.clip_skip),
        "ss_resolution": f"({res[0]}, {res[1]})",
        "ss_network_module": module,
        "ss_network_dim": str(net.rank),
        "ss_network_alpha": str(float(net.alpha)),
        "ss_network_args": _json(args),
    }
    if custom:
        md[CUSTOM_BASE_KEY] = custom if custom.startswith(("builtin:", "tiny:")) else leaf_name(custom)
    if not minimal:
        started = facts.get("started_at")
        o, sch, ds = cfg.optimizer, cfg.schedule, cfg.dataset
        md.update({
            "ss_session_id": str(facts.get("session_id") or random.randint(0, 2**32 - 1)),
            "ss_training_started_at": str(float(started)) if started is not None else "",
            "ss_training_finished_at": str(float(facts["finished_at"])) if facts.get("finished_at") else "",
            "ss_learning_rate": str(o.lr), "ss_unet_lr": str(o.lr), "ss_text_encoder_lr": str(o.text_encoder_lr),
            "ss_optimizer": f"{o.name}(weight_decay={o.weight_decay})", "ss_max_grad_norm": str(o.max_grad_norm),
            "ss_lr_scheduler": sch.scheduler, "ss_lr_warmup_steps": str(sch.warmup_steps),
            "ss_max_train_steps": str(sch.max_train_steps), "ss_seed": str(sch.seed),
            "ss_gradient_accumulation_steps": str(sch.grad_accum),
            "ss_steps": str(int(facts.get("steps", 0))), "ss_epoch": str(int(facts.get("epochs", 0))),
            "ss_num_epochs": str(int(facts.get("num_epochs", facts.get("epochs", 0)))),
            "ss_num_batches_per_epoch": str(int(facts.get("batches_per_epoch", 0))),
            "ss_batch_size_per_device": str(ds.batch_size),
            "ss_total_batch_size": str(ds.batch_size * sch.grad_accum),
            "ss_mixed_precision": precision_used,
            PRECISION_KEY: _json({"used": precision_used,
                                  "requested": cfg.precision.mixed_precision,
                                  "compiled": bool(facts.get("compiled"))}),
            "ss_gradient_checkpointing": str(cfg.precision.gradient_checkpointing),
            "ss_network_dropout": str(net.dropout),
            "ss_noise_offset": str(cfg.noise.noise_offset), "ss_min_snr_gamma": str(cfg.noise.min_snr_gamma),
            "ss_caption_dropout_rate": str(ds.caption_dropout), "ss_keep_tokens": str(ds.keep_tokens),
            "ss_shuffle_caption": str(ds.shuffle_caption), "ss_flip_aug": str(ds.flip),
            "ss_enable_bucket": str(ds.enable_buckets), "ss_cache_latents": str(ds.cache_latents),
            "ss_prior_loss_weight": str(ds.prior_loss_weight),
            "ss_num_train_images": str(int(facts.get("num_images", 0))),
            "ss_num_reg_images": str(int(facts.get("num_reg_images", 0))),
            "ss_dataset_dirs": _json(_folders(facts.get("folders"))),
            "ss_reg_dataset_dirs": _json(_folders(facts.get("reg_folders"))),
            "ss_tag_frequency": _json(_tag_frequency(facts.get("tag_frequency"))),
            "ss_bucket_info": _json(facts.get("bucket_info")) if facts.get("bucket_info") is not None else "null",
            "ss_new_sd_model_hash": str(facts.get("base_hash") or ""),
            "ss_sd_model_hash": str(facts.get("base_legacy_hash") or ""),
        })
        if cfg.saving.description:
            md["ss_training_comment"] = cfg.saving.description
        if cfg.noise.masked_loss:  # written only when on, as sd-scripts does: files without masks stay as they were
            md.update({"ss_masked_loss": "True", "ss_unmasked_weight": str(cfg.noise.unmasked_weight),
                       MASKED_IMAGES_KEY: str(int(facts.get("masked_images", 0)))})
    md.update(_modelspec(cfg, facts, family, pred, res))
    problems = privacy_problems(md)
    if problems:
        raise MetadataError("metadata would reveal local paths or the user name: " + "; ".join(problems))
    return md


EMA_KEY = "ss_atelier_ema"  # on an EMA adapter: {"decay": d, "start_step": s} of the moving average


def mark_ema(metadata: dict[str, str], ema: dict, minimal: bool = False) -> dict[str, str]:
    """The header of an adapter holding the exponential moving average of the trained weights: its
    ModelSpec title and description say so, and (unless minimal) EMA_KEY holds the average's settings."""
    out = dict(metadata)
    title = out.get("modelspec.title", "")
    out["modelspec.title"] = f"{title} (EMA)" if title else "EMA"
    note = f"Exponential moving average of the trained weights (decay {ema['decay']}, from step {ema['start_step']})."
    out["modelspec.description"] = f"{out['modelspec.description']} {note}" if out.get("modelspec.description") else note
    if not minimal:
        out[EMA_KEY] = _json({k: ema[k] for k in ("decay", "start_step")})
    return out


_ABS_PATH = re.compile(r"""(?:^|[\s"'=:,(\[{])(?:/[^/\s"']+){2,}|(?:^|[^A-Za-z])[A-Za-z]:[\\/][^\s"']|\\\\[^\s\\]+\\|~[/\\]""")


def privacy_problems(metadata: dict[str, str]) -> list[str]:
    """Keys whose values look like an absolute path, or hold the home folder or the user name as a
    path component. The thumbnail (a data: URL of base64) is checked for its prefix only."""
    problems = []
    home = os.path.expanduser("~")
    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    user_re = re.compile(rf"[/\\]{re.escape(user)}(?:[/\\]|$)") if len(user) >= 2 else None
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"{key!r}: metadata keys and values must be strings")
            continue
        if key == "modelspec.thumbnail":
            if not value.startswith("data:image/"):
                problems.append(f"{key}: not a data:image/ URL")
            continue
        if _ABS_PATH.search(value):
            problems.append(f"{key}: contains an absolute path")
        elif home not in ("", "/") and home in value:
            problems.append(f"{key}: contains the home folder")
        elif user_re is not None and user_re.search(value):
            problems.append(f"{key}: contains the user name as a path component")
    return problems
