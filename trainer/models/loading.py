"""Load a base model from what the user points at, offline where possible, never running its code.

spec is one of:
- "builtin:shapes": the demo base shipped in trainer/assets/shapes_base (a diffusers folder);
- a diffusers pipeline folder (has model_index.json);
- a single .safetensors checkpoint (A1111/Civitai/LDM layout): built with diffusers' from_single_file
  against the bundled configs in trainer/assets/configs/<family> and the bundled CLIP tokenizer, so it
  loads with no network;
- a legacy pickle (.ckpt/.pt/.pth/.bin), only if torch.load(weights_only=True) accepts it;
- a hub id ("owner/name"), from the local Hugging Face cache, or downloaded when online.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from trainer.formats.safetensors_io import SafetensorsError, model_hash
from trainer.models.base import FAMILIES, Base, load_clip_tokenizer
from trainer.models.detect import (FamilyDetectionError, detect_family, detect_family_from_folder,
                                   detect_prediction_type, detect_zero_terminal_snr, family_name,
                                   header_keys_and_shapes)
from trainer.models.random_arch import family_config_dir
from trainer.models.spec import BUILTINS, PICKLE_SUFFIXES, display_name, parse_base 

# Components a trainer never needs; dropping them also avoids loading anything else a folder names.
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


class ModelLoadError(RuntimeError):
    """A base model that cannot be loaded; the message names the path (or id) and the reason."""


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def training_scheduler(config: dict, prediction_type: str, zero_terminal_snr: bool | None = None):
    """The DDPM training schedule from a scheduler config. zero_terminal_snr True rescales the betas so
    the last step is pure noise (alphas_cumprod[-1] = 0) and spaces sampling steps "trailing" (so the
    first preview step starts there), as diffusers' docs advise for such models; None keeps the
    config's own setting (a diffusers folder saved with rescale_betas_zero_snr)."""
    from diffusers import DDPMScheduler

    keep = {k: v for k, v in config.items() if k in ("num_train_timesteps", "beta_start", "beta_end",
                                                      "beta_schedule", "trained_betas", "steps_offset",
                                                      "timestep_spacing", "rescale_betas_zero_snr")}
    if zero_terminal_snr is not None:
        keep["rescale_betas_zero_snr"] = zero_terminal_snr
        if zero_terminal_snr:
            keep["timestep_spacing"] = "trailing"
    # clip_sample only matters when sampling with DDPM; SD never clips.
    return DDPMScheduler.from_config(keep, prediction_type=prediction_type, clip_sample=False)


def set_noise_schedule(base: Base, prediction_type: str = "auto", zero_terminal_snr: str = "auto") -> Base:
    """Apply the config's explicit prediction type / zero-terminal-SNR choice to a built base (tiny and
    random bases, which have no file to detect them from); "auto" keeps what the base has."""
    pred = base.prediction_type if prediction_type in ("auto", "", None) else prediction_type
    ztsnr = None if zero_terminal_snr in ("auto", "", None) else zero_terminal_snr == "on"
    if pred != base.prediction_type or ztsnr is not None:
        base.scheduler = training_scheduler(dict(base.scheduler.config), pred, ztsnr)
        base.prediction_type = pred
        base.family = family_name(base.family, pred)
    return base


def _tokenizers(family: str) -> dict:
    if family == "sdxl":
        return {"tokenizer": load_clip_tokenizer("<|endoftext|>"), "tokenizer_2": load_clip_tokenizer("!")}
    return {"tokenizer": load_clip_tokenizer("!" if family.startswith("sd2") else "<|endoftext|>")}


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _unused_kwargs(family: str) -> dict:
    if family == "sdxl":
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _check_model_index(folder: Path, where: str) -> dict:
    """Refuse folders whose model_index.json names anything but diffusers/transformers classes: a
    custom library name makes diffusers look for a .py file in the folder."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{where}: not a diffusers model folder (no model_index.json)") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{where}: model_index.json is unreadable ({e})") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{where}: model_index.json is not a JSON object")
    for name, value in index.items():
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(value, list):
            continue
        library = value[0] if value else None
        if library not in (None, "diffusers", "transformers"):
            raise ModelLoadError(f"{where}: component {name!r} comes from {library!r}, not diffusers or transformers; "
                                 "custom model code is never run")
    return index


def _resolve_family(where: str, requested: str, detected: str) -> str:
    if requested in ("auto", "", None):
        return detected
    if requested not in FAMILIES:
        raise ModelLoadError(f"{where}: unknown family {requested!r}; expected auto or one of {FAMILIES}")
    base_requested = "sd2" if requested == "sd2-v" else requested
    if detected and base_requested != ("sd2" if detected == "sd2-v" else detected):
        raise ModelLoadError(f"{where}: family {requested!r} was asked for but the weights are {detected}")
    return requested


def _load_folder(folder: Path, where: str, family: str, prediction_type: str, dtype) -> tuple:
    _check_model_index(folder, where)
    try:
        detected, sched_pred = detect_family_from_folder(folder)
    except FamilyDetectionError as e:
        raise ModelLoadError(f"{where}: {e}") from None
    fam = _resolve_family(where, family, detected)
    pred = detect_prediction_type(fam, override=prediction_type) if prediction_type not in ("auto", "") \
        else ("v_prediction" if fam == "sd2-v" else sched_pred)
    try:
        pipe = _pipeline_class(fam).from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                    **_unused_kwargs(fam))
    except Exception as e:  # diffusers raises many types for a broken folder
        raise ModelLoadError(f"{where}: cannot load the diffusers folder ({type(e).__name__}: {e})") from None
    return pipe, family_name(fam, pred), pred


def _load_pickle_checked(path: Path) -> dict:
    """torch.load with weights_only=True: only tensors and plain containers, never arbitrary objects.
    A file that passes this holds nothing that could run code, so diffusers may read it again."""
    import pickle
    import zipfile

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: refused: this pickle checkpoint does not load as plain tensors "
                             f"(torch.load weights_only=True said: {first}). Pickles can run code; convert it "
                             "to .safetensors with a tool you trust, or use the .safetensors version") from None
    while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: not a state dict (a {type(sd).__name__})")
    return sd


def _load_single_file(path: Path, family: str, prediction_type: str, dtype, resolution, config_dir) -> tuple:
    where = str(path)
    if path.suffix.lower() == ".safetensors":
        try:
            shapes, metadata = header_keys_and_shapes(path)
        except SafetensorsError as e:
            raise ModelLoadError(f"{where}: corrupt or not a safetensors file ({e})") from None
    else:
        sd = _load_pickle_checked(path)
        shapes = {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
        metadata = {}
        del sd
    try:
        detected = detect_family(shapes)
    except FamilyDetectionError as e:
        raise ModelLoadError(f"{where}: unknown model family: {e}") from None
    fam = _resolve_family(where, family, detected)
    if family == "sd2" and prediction_type in ("auto", ""):
        prediction_type = "epsilon"  # the user named the 512 px base family rather than sd2-v
    pred = detect_prediction_type(fam, shapes, metadata, name=path.name, resolution=resolution,
                                  override=prediction_type)
    fam = family_name(fam, pred)
    config = Path(config_dir) if config_dir else family_config_dir(fam)
    try:
        pipe = _pipeline_class(fam).from_single_file(
            str(path), config=str(config), local_files_only=True, dtype=dtype,
            **_tokenizers(fam), **_unused_kwargs(fam))
    except Exception as e:  # conversion errors come as KeyError/ValueError/RuntimeError from diffusers
        raise ModelLoadError(f"{where}: cannot build a {fam} pipeline from this checkpoint "
                             f"({type(e).__name__}: {e})") from None
    return pipe, fam, pred


def _load_hub(repo_id: str, family: str, prediction_type: str, dtype) -> tuple:
    from diffusers import DiffusionPipeline

    offline = _offline()
    try:
        folder = DiffusionPipeline.download(repo_id, local_files_only=offline,
                                            **{k: None for k in UNUSED_COMPONENTS})
    except Exception as e:
        if offline:
            raise ModelLoadError(f"{repo_id}: not a local file or folder, and the hub id is not in the local "
                                 "Hugging Face cache while the hub is offline (HF_HUB_OFFLINE=1). Loading it needs "
                                 "internet access once, or point to a local copy (diffusers folder or "
                                 ".safetensors file)") from None
        raise ModelLoadError(f"{repo_id}: cannot download from the Hugging Face hub "
                             f"({type(e).__name__}: {e}); check the id and your connection, "
                             "or point to a local copy") from None
    return _load_folder(Path(folder), repo_id, family, prediction_type, dtype)


def _base_from_pipeline(pipe, family: str, pred: str, spec: str, zero_terminal_snr: bool | None = None) -> Base:
    is_xl = family == "sdxl"
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if is_xl else [pipe.text_encoder]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if is_xl else [pipe.tokenizer]
    return Base(family=family, unet=pipe.unet, vae=pipe.vae, text_encoders=encoders, tokenizers=tokenizers,
                scheduler=training_scheduler(dict(pipe.scheduler.config), pred, zero_terminal_snr),
                prediction_type=pred,
                name=display_name(spec), source=spec,
                extra={"inference_scheduler_config": dict(pipe.scheduler.config)})


def load_vae(spec: str, family: str, dtype=torch.float32):
    """A replacement VAE: a .safetensors file (LDM or diffusers names) or a diffusers folder (the VAE's own
    folder with config.json, or a pipeline folder with vae/)."""
    from diffusers import AutoencoderKL

    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{spec}: VAE not found")
    try:
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").is_file() else None
            if sub is None and not (path / "config.json").is_file():
                raise ModelLoadError(f"{spec}: not a VAE folder (no config.json or vae/config.json)")
            return AutoencoderKL.from_pretrained(str(path), subfolder=sub, dtype=dtype, local_files_only=True)
        if path.suffix.lower() != ".safetensors":
            raise ModelLoadError(f"{spec}: a separate VAE must be a .safetensors file or a diffusers folder")
        header_keys_and_shapes(path)  # validates the header before diffusers maps the file
        return AutoencoderKL.from_single_file(str(path), config=str(family_config_dir(family)), subfolder="vae",
                                              local_files_only=True, dtype=dtype)
    except ModelLoadError:
        raise
    except SafetensorsError as e:
        raise ModelLoadError(f"{spec}: corrupt or not a safetensors file ({e})") from None
    except Exception as e:
        raise ModelLoadError(f"{spec}: cannot load this VAE ({type(e).__name__}: {e})") from None


def load_base(spec: str, family: str = "auto", prediction_type: str = "auto", vae: str = "",
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
              resolution: int | None = None, config_dir: str | Path | None = None,
              zero_terminal_snr: str = "auto") -> Base:
    """Load a base model (see the module docstring for what spec may be).

    family: "auto" or one of FAMILIES; a named family must agree with the weights.
    prediction_type: "auto", "epsilon" or "v_prediction" (see trainer.models.detect for how auto decides
    on single files; folders and hub ids take their scheduler config's).
    resolution: training resolution, the hint that tells an SD2 768-v single file from a 512 base one.
    config_dir: a diffusers config folder to use for a single file instead of the bundled one.
    zero_terminal_snr: "auto" (a .safetensors file's markers, a folder's scheduler config), "on" or "off".
    Raises ModelLoadError naming the path or id and the reason."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelLoadError("no base model given")
    if prediction_type not in ("auto", "", "epsilon", "v_prediction"):
        raise ModelLoadError(f"{spec}: prediction_type must be auto, epsilon or v_prediction, not {prediction_type!r}")
    model_hash_hex = ""
    ztsnr = None if zero_terminal_snr in ("auto", "") else detect_zero_terminal_snr(override=zero_terminal_snr)
    parsed = parse_base(spec)
    if parsed.kind == "builtin":
        folder = parsed.path
        if folder is None:
            raise ModelLoadError(f"{spec}: unknown built-in model; known: {', '.join(BUILTINS)}")
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(f"{spec}: the bundled demo base is missing from {folder} "
                                 "(reinstall, or rebuild it with scripts/train_demo_base.py)")
        pipe, fam, pred = _load_folder(folder, spec, family, prediction_type, dtype)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            pipe, fam, pred = _load_folder(path, spec, family, prediction_type, dtype)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in (".safetensors", *PICKLE_SUFFIXES):
                raise ModelLoadError(f"{spec}: unsupported model file type {suffix or '(none)'!r}; expected "
                                     ".safetensors, a diffusers folder or a hub id")
            pipe, fam, pred = _load_single_file(path, family, prediction_type, dtype, resolution, config_dir)
            if suffix == ".safetensors":
                model_hash_hex = model_hash(path)
                if ztsnr is None:  # the header was read (and checked) by the loader a moment ago
                    ztsnr = detect_zero_terminal_snr(*header_keys_and_shapes(path))
        elif parsed.kind != "hub":
            raise ModelLoadError(f"{spec}: no such file or folder")
        else:
            pipe, fam, pred = _load_hub(spec, family, prediction_type, dtype)
    base = _base_from_pipeline(pipe, fam, pred, spec, ztsnr)
    base.model_hash = model_hash_hex
    if vae:
        base.vae = load_vae(vae, fam, dtype)
    base.unet.requires_grad_(False)
    base.vae.requires_grad_(False)
    for te in base.text_encoders:
        te.requires_grad_(False)
    return base.to(device)
