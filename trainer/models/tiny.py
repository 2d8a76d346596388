"""Tiny SD1-, SD2-v- and SDXL-shaped pipelines built from configs, for tests and format checks.

Same module structure and naming as the real families (cross-attention blocks, conv proj_in on SD1,
linear projections on SD2/SDXL, two text encoders and text_time embeddings on SDXL), random weights,
with the real CLIP BPE tokenizer. They build in well under a second.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trainer.models.base import Base, load_clip_tokenizer

TINY_FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")


def _text_config(hidden: int = 32, layers: int = 5, act: str = "quick_gelu") -> CLIPTextConfig:
    return CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                          num_attention_heads=4, vocab_size=49408, max_position_embeddings=77,
                          projection_dim=hidden, hidden_act=act, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=1 if act == "quick_gelu" else 0)


def noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    # Stable Diffusion's training schedule
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         steps_offset=1, prediction_type=prediction_type)


def tiny_vae() -> AutoencoderKL:
    # four blocks: 8 pixels per latent, as in every SD VAE (a 64 px image is an 8×8 latent, 512 px is 64×64)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 64, 64, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=64)


def build_tiny(family: str = "sd1", seed: int = 0) -> Base:
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {TINY_FAMILIES}")
    torch.manual_seed(seed)
    pred = "v_prediction" if family == "sd2-v" else "epsilon"
    if family == "sdxl":
        te1 = CLIPTextModel(_text_config(32, 3))
        te2 = CLIPTextModelWithProjection(_text_config(32, 3, act="gelu"))
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32, norm_num_groups=16)
        encoders = [te1, te2]
        tokenizers = [load_clip_tokenizer("<|endoftext|>"), load_clip_tokenizer("!")]
    else:
        sd2 = family.startswith("sd2")
        te = CLIPTextModel(_text_config(32, 5, act="gelu" if sd2 else "quick_gelu"))
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1 if not sd2 else 2,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2, norm_num_groups=16)
        encoders = [te]
        tokenizers = [load_clip_tokenizer("!" if sd2 else "<|endoftext|>")]
    return Base(family=family, unet=unet, vae=tiny_vae(), text_encoders=encoders, tokenizers=tokenizers,
                scheduler=noise_scheduler(pred), prediction_type=pred, name=f"tiny-{family}")
