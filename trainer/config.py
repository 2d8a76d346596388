"""The one training-config schema.

Every option is defined once here, with its label, help text, range, group and default. The CLI
(`--set section.key=value`), the TOML presets and the GUI form are all generated from it.
A config on disk is TOML with one table per section; a preset is a partial config over the defaults.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Iterator, Literal, get_args, get_origin

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from trainer.run.atomic import atomic_write_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = REPO_ROOT / "presets"


def opt(default: Any, label: str, help: str, *, ge: float | None = None, le: float | None = None,
        advanced: bool = False, widget: str | None = None) -> Any:
    """A schema field with the metadata the GUI and CLI need."""
    extra = {"label": label, "advanced": advanced}
    if widget:
        extra["widget"] = widget
    kw: dict[str, Any] = {}
    if ge is not None:
        kw["ge"] = ge
    if le is not None:
        kw["le"] = le
    if isinstance(default, list):
        return Field(default_factory=lambda: list(default), description=help, json_schema_extra=extra, **kw)
    return Field(default, description=help, json_schema_extra=extra, **kw)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    base: str = opt("builtin:shapes", "Base model",
                    "A diffusers folder, a single-file .safetensors checkpoint (SD1.x, SD2.x, SDXL), a hub id "
                    "(needs internet), or builtin:shapes for the bundled demo base.")
    family: Literal["auto", "sd1", "sd2", "sd2-v", "sdxl"] = opt(
        "auto", "Model family", "auto detects SD1.x / SD2.x / SD2.x-v / SDXL from the weights.", advanced=True)
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = opt(
        "auto", "Prediction type",
        "What the UNet predicts; auto takes it from the model file (its v_pred marker or ModelSpec "
        "prediction_type; v for SD2-768-v). NoobAI-XL v-pred needs v_prediction: trained as epsilon it "
        "gives empty images.", advanced=True)
    zero_terminal_snr: Literal["auto", "on", "off"] = opt(
        "auto", "Zero terminal SNR",
        "Rescale the noise schedule so its last step is pure noise (trailing timesteps in previews), as "
        "NoobAI-XL v-pred was trained; auto takes it from the model file (a ztsnr marker or "
        "ss_zero_terminal_snr). Use with v-prediction only.", advanced=True)
    clip_skip: int = opt(1, "CLIP skip",
                         "Use the output of the N-th last text-encoder layer (2 for SD1.5 anime models). SDXL "
                         "(Illustrious, NoobAI, Pony) already uses the penultimate layer — what 'clip skip 2' "
                         "means elsewhere — so keep 1 there; more skips one layer further.", ge=1, le=12)
    vae: str = opt("", "Separate VAE", "Optional VAE to use instead of the checkpoint's own (path).", advanced=True)


class DatasetSection(Section):
    path: str = opt("", "Dataset folder",
                    "Images with same-name .txt captions; kohya-style `N_name` subfolders repeat their images N times.")
    resolution: int = opt(512, "Resolution", "Training resolution in pixels (side of a square of equal area).",
                          ge=64, le=2048)
    repeats: int = opt(1, "Repeats", "How often each image is shown per epoch (folders named N_name override).",
                       ge=1, le=1000)
    batch_size: int = opt(1, "Batch size", "Images per step.", ge=1, le=64)
    enable_buckets: bool = opt(True, "Aspect-ratio buckets", "Train non-square images at their own aspect ratio.")
    bucket_step: int = opt(64, "Bucket step", "Bucket sides are multiples of this many pixels.", ge=8, le=256,
                           advanced=True)
    max_aspect: float = opt(2.0, "Max aspect ratio", "Widest bucket allowed.", ge=1.0, le=4.0, advanced=True)
    caption_extension: str = opt(".txt", "Caption extension", "Caption sidecar extension (.caption also read).",
                                 advanced=True)
    shuffle_caption: bool = opt(False, "Shuffle caption tags", "Shuffle comma-separated tags each time.")
    keep_tokens: int = opt(0, "Keep first N tags", "Tags kept in place when shuffling (e.g. the trigger word).",
                           ge=0, le=32)
    caption_dropout: float = opt(0.0, "Caption dropout", "Share of steps trained with an empty caption.",
                                 ge=0.0, le=1.0, advanced=True)
    flip: bool = opt(False, "Random flip", "Mirror images horizontally at random (not for asymmetric subjects).")
    reg_path: str = opt("", "Regularisation images", "Class images for prior preservation (optional folder).",
                        advanced=True)
    prior_loss_weight: float = opt(1.0, "Prior loss weight", "Weight of the regularisation images' loss.",
                                   ge=0.0, le=10.0, advanced=True)
    cache_latents: bool = opt(True, "Cache latents", "Encode each image once; the VAE is not run during training.")
    cache_text: bool = opt(True, "Cache text-encoder outputs",
                           "Encode each caption once when the text encoder is not trained and captions are fixed.",
                           advanced=True)
    cache_on_first_use: bool = opt(
        True, "Encode on first use",
        "Encode an image when a step first uses it (captions, which are cheap, before step 1), so step 1 "
        "starts at once and the first epoch runs a little slower; later epochs read the cache. Off: encode "
        "every image before step 1.",
        advanced=True)
    cache_to_disk: bool = opt(True, "Cache to disk",
                              "Keep caches in a folder beside the dataset, reused by later runs.", advanced=True)
    background: str = opt("#ffffff", "Alpha background", "Colour transparent pixels are composited on.",
                          advanced=True)


class NetworkSection(Section):
    algo: Literal["lora", "loha", "lokr", "adalora"] = opt(
        "lora", "Adapter type", "LoRA (B·A), LoHa (Hadamard product), LoKr (Kronecker), AdaLoRA (adaptive rank).")
    rank: int = opt(16, "Rank (dim)", "Size of the low-rank update; 8–32 for characters and styles.", ge=1, le=1024)
    alpha: float = opt(8.0, "Alpha", "Scale is alpha / rank; alpha = rank means scale 1.", ge=0.0, le=4096.0)
    dropout: float = opt(0.0, "Dropout", "Dropout on the adapter's input.", ge=0.0, le=0.9, advanced=True)
    use_dora: bool = opt(False, "DoRA", "Weight-decomposed LoRA: learns magnitude and direction separately.")
    dora_axis: Literal["in", "out"] = opt(
        "in", "DoRA norm axis",
        "in (default): one magnitude per input column, the form ComfyUI and A1111/Forge apply exactly. "
        "out: one per output row (peft, LyCORIS wd_on_out). Warning: A1111/Forge mis-apply an 'out' file "
        "(some layers many times too strong) and ComfyUI only approximates it (it divides by the base "
        "weight's norm); pick 'out' only for LyCORIS or peft users. diffusers and sd-scripts ignore DoRA's "
        "magnitudes either way.",
        advanced=True)
    conv: bool = opt(False, "LoCon (train convs)", "Also train ResNet convs, time embeddings and down/upsamplers.")
    conv_rank: int = opt(8, "Conv rank", "Rank of the conv adapters.", ge=1, le=512, advanced=True)
    conv_alpha: float = opt(4.0, "Conv alpha", "Alpha of the conv adapters.", ge=0.0, le=4096.0, advanced=True)
    train_unet: bool = opt(True, "Train UNet", "Put adapters on the UNet.")
    train_text_encoder: bool = opt(False, "Train text encoder", "Put adapters on the text encoder(s) too.")
    quantize_base: Literal["none", "nf4"] = opt(
        "none", "Quantise base (QLoRA)", "Hold the frozen base in 4-bit NF4 to save memory.", advanced=True)
    loftq: bool = opt(False, "LoftQ init", "Initialise A and B from the 4-bit quantisation error (QLoRA only).",
                      advanced=True)
    adalora_target_rank: int = opt(4, "AdaLoRA average rank",
                                   "Average rank AdaLoRA prunes down to; must be below Rank (dim), its starting rank.",
                                   ge=1, le=512, advanced=True)
    init_weights: str = opt("", "Start from adapter", "A kohya LoRA file to continue training from (optional).",
                            advanced=True)


class OptimizerSection(Section):
    name: Literal["adamw", "adamw8bit", "prodigy", "lion", "adafactor"] = opt(
        "adamw", "Optimizer", "AdamW is the safe default; Prodigy finds its own learning rate (set lr = 1).")
    lr: float = opt(1e-4, "UNet learning rate", "Learning rate of the UNet adapters.", ge=0.0, le=10.0)
    text_encoder_lr: float = opt(5e-5, "Text-encoder learning rate", "Learning rate of the text-encoder adapters.",
                                 ge=0.0, le=10.0)
    weight_decay: float = opt(0.01, "Weight decay", "Decoupled weight decay.", ge=0.0, le=1.0, advanced=True)
    max_grad_norm: float = opt(1.0, "Max grad norm", "Clip gradients to this norm (0 = off).", ge=0.0, le=100.0,
                               advanced=True)
    ema: bool = opt(False, "EMA of the weights",
                    "Keep an exponential moving average of the adapter weights and save it beside each adapter "
                    "(<name>-ema.safetensors): a smoothed version of the last steps' weights.")
    ema_decay: float = opt(0.999, "EMA decay",
                           "Share of the average kept at each step (0 = the raw weights, 1 = frozen at the start); "
                           "about 1 − 1/(steps the average should span).", ge=0.0, le=1.0, advanced=True)
    ema_start_step: int = opt(0, "EMA start step",
                              "The average starts from the weights of this step (before it, it follows them).",
                              ge=0, le=1_000_000, advanced=True)
    ema_on_cpu: bool = opt(False, "EMA on CPU",
                           "Hold the average in CPU memory (saves GPU memory; each step copies the adapter over).",
                           advanced=True)


class ScheduleSection(Section):
    max_train_steps: int = opt(1000, "Training steps", "Total optimizer steps.", ge=1, le=1_000_000)
    scheduler: Literal["constant", "linear", "cosine", "cosine_with_restarts"] = opt(
        "cosine", "LR schedule", "How the learning rate changes over the run.")
    warmup_steps: int = opt(0, "Warmup steps", "Steps of linear warmup.", ge=0, le=100_000)
    num_cycles: int = opt(1, "Restart cycles", "Cycles for cosine_with_restarts.", ge=1, le=100, advanced=True)
    grad_accum: int = opt(1, "Gradient accumulation", "Micro-batches per optimizer step.", ge=1, le=128,
                          advanced=True)
    seed: int = opt(42, "Seed", "Seed for noise, data order and adapter init.", ge=0, le=2**32 - 1)


class NoiseSection(Section):
    noise_offset: float = opt(0.0, "Noise offset", "Adds per-channel offset noise (0.05–0.1 helps dark/bright images).",
                              ge=0.0, le=1.0)
    min_snr_gamma: float = opt(5.0, "Min-SNR gamma", "Loss weighting by min(SNR, gamma)/SNR (0 = off).",
                               ge=0.0, le=20.0)
    min_timestep: int = opt(0, "Min timestep", "Lowest timestep sampled.", ge=0, le=999, advanced=True)
    max_timestep: int = opt(1000, "Max timestep", "Highest timestep sampled (exclusive).", ge=1, le=1000,
                            advanced=True)
    v_loss_like_noise: bool = opt(False, "Scale v-loss like noise",
                                  "v-prediction only: weight each sample's loss by SNR/(SNR+1), so it weighs "
                                  "timesteps as noise prediction does (sd-scripts' scale_v_pred_loss_like_noise_pred).",
                                  advanced=True)
    masked_loss: bool = opt(False, "Masked loss",
                            "Weight the loss by each image's mask: a same-name <name>_mask.png beside the image "
                            "(white = train, black = ignore, grey = in between), else the image's transparency. "
                            "Images without a mask train on every pixel.")
    unmasked_weight: float = opt(0.0, "Unmasked weight",
                                 "Masked loss only: how much the masked-out (black) area still counts, 0 = not at "
                                 "all, 1 = as much as the rest (the mask then changes nothing).",
                                 ge=0.0, le=1.0, advanced=True)


class PrecisionSection(Section):
    mixed_precision: Literal["no", "fp16", "bf16"] = opt(
        "bf16", "Mixed precision", "bf16 on recent GPUs and on CPUs with native bf16 (see bf16 on CPU); fp32 where "
        "the device lacks it (fp16 on a CPU trains in fp32). The VAE always stays fp32: SDXL's VAE overflows in "
        "fp16 (NaN latents, black images).")
    cpu_bf16: Literal["auto", "on", "off"] = opt(
        "auto", "bf16 on CPU",
        "With mixed precision bf16 on a CPU: auto = only where the CPU computes bf16 natively (AVX512-BF16 or "
        "AMX), else fp32; on = also elsewhere (emulated: several times slower than fp32); off = fp32.",
        advanced=True)
    compile: bool = opt(False, "Compile the UNet",
                        "torch.compile the UNet once the adapter is in: the first step waits while it compiles "
                        "(minutes on a CPU, which also needs a C compiler); pays off on long runs only.",
                        advanced=True)
    gradient_checkpointing: bool = opt(False, "Gradient checkpointing", "Less memory, ~25% slower.")
    attention: Literal["sdpa", "xformers"] = opt("sdpa", "Attention", "PyTorch SDPA, or xformers when installed.",
                                                 advanced=True)
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "Device", "Where to train.", advanced=True)


class SamplingSection(Section):
    every_n_steps: int = opt(100, "Preview every N steps", "0 = only at start and end.", ge=0, le=1_000_000)
    at_start: bool = opt(True, "Preview at step 0", "Show the base model's images before training.")
    prompts: list[str] = opt([], "Preview prompts", "One prompt per line; fixed seeds make runs comparable.",
                             widget="lines")
    negative_prompt: str = opt("", "Negative prompt", "Applied to every preview.")
    seed: int = opt(1234, "Preview seed", "Seed of the first prompt; the next prompts use seed+1, …", ge=0,
                    le=2**32 - 1, advanced=True)
    steps: int = opt(20, "Sampling steps", "Denoising steps per preview.", ge=1, le=150, advanced=True)
    guidance_scale: float = opt(7.0, "CFG scale", "Classifier-free guidance scale.", ge=1.0, le=30.0,
                                advanced=True)
    guidance_rescale: float = opt(0.0, "CFG rescale",
                                  "Rescale guided predictions against over-exposure (0.7 for zero-terminal-SNR "
                                  "models such as NoobAI-XL v-pred; 0 = off).", ge=0.0, le=1.0, advanced=True)
    sampler: Literal["euler", "euler_a", "dpmpp_2m", "ddim"] = opt("dpmpp_2m", "Sampler", "Preview sampler.",
                                                                     advanced=True)
    size: int = opt(0, "Preview size", "Pixels per side (0 = training resolution).", ge=0, le=2048, advanced=True)
    style: Literal["none", "illustrious", "noobai", "pony", "sdxl-photo", "sd15-anime", "sd15-photo"] = opt(
        "none", "Default preview style",
        "With no preview prompts: draw the model family's own prompts, negative prompt and size (trigger words "
        "filled in). none = no previews without prompts.", advanced=True)
    with_base: bool = opt(True, "Base image beside previews",
                          "Also draw the base model at the same seed, to compare.", advanced=True)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        # run folders written before the rename say `cfg` for the guidance scale
        if isinstance(data, dict) and "cfg" in data and "guidance_scale" not in data:
            data = {("guidance_scale" if k == "cfg" else k): v for k, v in data.items()}
        return data


class SavingSection(Section):
    output_name: str = opt("my-lora", "Output name", "File name of the adapter (letters, digits, - and _).")
    every_n_steps: int = opt(0, "Save every N steps", "0 = only at the end.", ge=0, le=1_000_000)
    keep_last: int = opt(3, "Keep last N states", "Resumable states kept (older ones are deleted).", ge=1, le=100,
                         advanced=True)
    precision: Literal["fp16", "bf16", "fp32"] = opt("fp16", "Save precision", "dtype of the saved adapter.")
    minimal_metadata: bool = opt(False, "Minimal metadata",
                                 "Write only the keys clients need (no dataset or hyperparameter details).",
                                 advanced=True)
    title: str = opt("", "Title", "ModelSpec title (defaults to the output name).", advanced=True)
    trigger_phrase: str = opt("", "Trigger words", "Words that call up the concept, for Civitai and A1111.")
    description: str = opt("", "Description", "Shown on model pages.", advanced=True)
    author: str = opt("", "Author", "ModelSpec author.", advanced=True)
    license: str = opt("", "License", "ModelSpec license.", advanced=True)
    tags: str = opt("", "Tags", "Comma-separated ModelSpec tags.", advanced=True)


class ValidationSection(Section):
    split: float = opt(0.0, "Hold-out share",
                       "Share of the dataset's images kept out of training to measure a validation loss at each save "
                       "(0 = off). The same images every time, chosen from the validation seed.", ge=0.0, le=0.5)
    path: str = opt("", "Validation folder",
                    "A separate folder of captioned images to measure the validation loss on (instead of a "
                    "hold-out share); none of them is trained on.")
    seed: int = opt(1729, "Validation seed",
                    "Chooses the held-out images and each one's fixed noise, independent of the training seed.",
                    ge=0, le=2**32 - 1, advanced=True)
    timesteps: int = opt(4, "Timesteps per image",
                         "Fixed timesteps, spread over the sampled range, at which each image's loss is measured.",
                         ge=1, le=64, advanced=True)
    every_n_steps: int = opt(0, "Validate every N steps",
                             "Also measure between saves (0 = at each save and at the end only).", ge=0,
                             le=1_000_000, advanced=True)

    @property
    def enabled(self) -> bool:
        return self.split > 0 or bool(self.path)


GROUPS: dict[str, str] = {
    "model": "Model", "dataset": "Dataset", "network": "Network", "optimizer": "Optimizer",
    "schedule": "Schedule", "noise": "Noise & loss", "precision": "Precision & memory",
    "sampling": "Previews", "saving": "Saving", "validation": "Validation",
}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    noise: NoiseSection = Field(default_factory=NoiseSection)
    precision: PrecisionSection = Field(default_factory=PrecisionSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    saving: SavingSection = Field(default_factory=SavingSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        import re
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", self.saving.output_name) or ".." in self.saving.output_name:
            raise ValueError("saving.output_name: use letters, digits, '-', '_' and '.' only (no path)")
        if self.noise.min_timestep >= self.noise.max_timestep:
            raise ValueError("noise.min_timestep must be below noise.max_timestep")
        if self.network.loftq and self.network.quantize_base != "nf4":
            raise ValueError("network.loftq needs network.quantize_base = 'nf4'")
        if not (self.network.train_unet or self.network.train_text_encoder):
            raise ValueError("network: train_unet or train_text_encoder must be on")
        if self.validation.split > 0 and self.validation.path:
            raise ValueError("validation: set split (a share of the dataset) or path (a separate folder), not both")
        from trainer.adapter.rules import network_problems, schedule_problems

        problems = network_problems(self.network) + schedule_problems(self.network, self.schedule.max_train_steps)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ConfigError(ValueError):
    """A config problem, with the offending field named."""


def _format_validation(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown option"
        lines.append(f"{loc}: {msg}")
    return ConfigError(f"{source}: " + "; ".join(lines))


def iter_fields() -> Iterator[tuple[str, str, FieldInfo, Any]]:
    """(section, key, FieldInfo, annotation) for every option, in schema order."""
    for section, sinfo in TrainConfig.model_fields.items():
        cls = sinfo.default_factory  # the section class
        for key, finfo in cls.model_fields.items():  # type: ignore[union-attr]
            yield section, key, finfo, finfo.annotation


def field_meta(finfo: FieldInfo) -> dict[str, Any]:
    extra = dict(finfo.json_schema_extra or {})  # type: ignore[arg-type]
    meta: dict[str, Any] = {"label": extra.get("label", ""), "help": finfo.description or "",
                            "advanced": extra.get("advanced", False), "widget": extra.get("widget")}
    for m in finfo.metadata:
        for bound in ("ge", "le"):
            if getattr(m, bound, None) is not None:
                meta[bound] = getattr(m, bound)
    ann = finfo.annotation
    if get_origin(ann) is Literal:
        meta["choices"] = list(get_args(ann))
    return meta


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str, ann: Any) -> Any:
    if ann is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"not a boolean: {text!r}")
    if get_origin(ann) is list:
        return [p for p in text.split("\n") if p.strip()] if "\n" in text else [p.strip() for p in text.split("|") if p.strip()]
    return text  # pydantic coerces str -> int/float in lax mode


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply CLI `section.key=value` strings to a raw config dict."""
    anns = {f"{s}.{k}": ann for s, k, _, ann in iter_fields()}
    data = deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in anns:
            raise ConfigError(f"--set {key}: unknown option")
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = _parse_value(value, anns[key])
    return data


def from_dict(data: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _format_validation(e, source) from None


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    data = apply_overrides(read_toml(path), overrides or [])
    return from_dict(data, str(path))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


# Top-level keys a preset may hold beside the config sections: what it is for, in an artist's words (the
# studio shows it), and the preset it starts from (a low-VRAM variant changes only the memory settings).
PRESET_ONLY_KEYS = ("description", "extends")


def _preset_file(name: str) -> Path:
    p = Path(name)
    if p.suffix:
        return p
    if name not in preset_names():
        raise ConfigError(f"preset {name!r}: not found in {PRESETS_DIR.name}/ (have: {', '.join(preset_names())})")
    return PRESETS_DIR / f"{name}.toml"


def read_preset(name: str, _chain: tuple[str, ...] = ()) -> tuple[dict, str]:
    """(partial config, description) of a preset (a name or a .toml path), its `extends` chain applied."""
    path = _preset_file(name)
    data = read_toml(path)
    description, parent = data.pop("description", ""), data.pop("extends", "")
    for key, value in (("description", description), ("extends", parent)):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string")
    if parent:
        if parent in _chain or parent == path.stem:
            raise ConfigError(f"{path}: extends {parent!r} goes round in a circle")
        if Path(parent).suffix:
            raise ConfigError(f"{path}: extends names a bundled preset, not a file ({parent!r})")
        inherited, parent_description = read_preset(parent, (*_chain, path.stem))
        data, description = deep_merge(inherited, data), description or parent_description
    return data, description


def preset_description(name: str) -> str:
    """What a preset is for, in an artist's words ("" when it says nothing)."""
    try:
        return read_preset(name)[1]
    except ConfigError:
        return ""


def load_preset(name: str, overrides: list[str] | None = None) -> TrainConfig:
    """A preset is a partial config over the defaults; `name` is a preset name or a .toml path."""
    data, _ = read_preset(name)
    return from_dict(apply_overrides(data, overrides or []), str(_preset_file(name)))


def to_toml(cfg: TrainConfig) -> str:
    return tomli_w.dumps(cfg.model_dump(mode="json"))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_bytes(Path(path), to_toml(cfg).encode("utf-8"))


def adapter_starts_at_base(cfg: TrainConfig) -> bool:
    """Whether the adapted model equals the base at step 0 (B = 0): not when LoftQ starts from the
    quantisation error, nor when the weights start from a file."""
    return not cfg.network.loftq and not cfg.network.init_weights
