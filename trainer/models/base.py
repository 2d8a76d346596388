"""The loaded base model: UNet, VAE, text encoder(s), tokenizer(s), schedule, family."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.models.spec import ASSETS

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")


def load_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer shipped with the project (no download). OpenCLIP-based encoders
    (SD2, SDXL's second) pad with '!'."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(ASSETS / "clip_tokenizer"), pad_token=pad_token)


@dataclass
class Base:
    family: str
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    scheduler: Any  # the training noise schedule (DDPMScheduler)
    prediction_type: str = "epsilon"
    name: str = "base"
    source: str = ""  # what the user pointed at (path or hub id), never written into adapters
    model_hash: str = ""  # sshs-style hash of a single-file checkpoint, when known
    extra: dict = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def is_v(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether the training schedule is rescaled to zero terminal SNR (the scheduler says so)."""
        return bool(self.scheduler.config.get("rescale_betas_zero_snr", False))

    def pipeline(self, scheduler=None):
        """An inference pipeline sharing this base's modules (adapters included, if injected)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        sched = scheduler or self.scheduler
        if self.is_sdxl:
            pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoders[0],
                                             text_encoder_2=self.text_encoders[1], tokenizer=self.tokenizers[0],
                                             tokenizer_2=self.tokenizers[1], unet=self.unet, scheduler=sched)
        else:
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoders[0],
                                           tokenizer=self.tokenizers[0], unet=self.unet, scheduler=sched,
                                           safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Base":
        for m in [self.unet, self.vae, *self.text_encoders]:
            m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        self.pipeline().save_pretrained(str(folder), safe_serialization=True)
