"""Write trainer/assets/configs/{sd1,sd2,sd2-v,sdxl}: diffusers pipeline-folder configs, no weights.

Single-file checkpoints (.safetensors from Civitai/A1111) carry weights only; diffusers needs the
component configs to build the models, and would otherwise fetch them from the hub. These are the
published configs of runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1-base (512,
epsilon), stabilityai/stable-diffusion-2-1 (768, v_prediction) and stabilityai/stable-diffusion-xl-base-1.0,
with the safety checker and feature extractor dropped (a trainer needs neither).

Tokenizer folders hold only tokenizer_config.json and special_tokens_map.json (with the right pad
token: "!" for the OpenCLIP encoders); the 1.5 MB BPE vocabulary lives once in
trainer/assets/clip_tokenizer and trainer.models.loading passes the tokenizers in. Pass
--copy-tokenizer-files to make each folder self-contained (+1.5 MB per tokenizer).

    python scripts/make_family_configs.py [--copy-tokenizer-files]
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.run.atomic import atomic_write_text  # noqa: E402

OUT = ROOT / "trainer" / "assets" / "configs"
TOKENIZER_SRC = ROOT / "trainer" / "assets" / "clip_tokenizer"

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
            "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "trained_betas": None}

UNET_COMMON = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "center_input_sample": False, "downsample_padding": 1,
    "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "class_embed_type": None,
    "resnet_time_scale_shift": "default",
}
SD_BLOCKS = {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def vae(sample_size: int, **extra) -> dict:
    return {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "sample_size": sample_size, **extra}


def clip_text(cls: str, hidden: int, inter: int, layers: int, heads: int, act: str, proj: int) -> dict:
    # bos/eos 0/2 are what the published configs say; eos_token_id == 2 makes transformers take the
    # pooled output at argmax(input_ids) (the EOS token, 49407), as the original models do.
    return {"architectures": [cls], "model_type": "clip_text_model", "attention_dropout": 0.0, "dropout": 0.0,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_act": act, "hidden_size": hidden,
            "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": inter,
            "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": heads,
            "num_hidden_layers": layers, "projection_dim": proj, "torch_dtype": "float32", "vocab_size": 49408}


CLIP_L = clip_text("CLIPTextModel", 768, 3072, 12, 12, "quick_gelu", 768)
# OpenCLIP ViT-H/14 text tower without its last layer: SD2 conditions on the penultimate layer.
OPENCLIP_H = clip_text("CLIPTextModel", 1024, 4096, 23, 16, "gelu", 512)
OPENCLIP_BIGG = clip_text("CLIPTextModelWithProjection", 1280, 5120, 32, 20, "gelu", 1280)


def sd2_unet(sample_size: int, upcast: bool) -> dict:
    return {**UNET_COMMON, **SD_BLOCKS, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True, "upcast_attention": upcast, "sample_size": sample_size}


def sd_index(scheduler_cls: str) -> dict:
    return {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
            "safety_checker": [None, None], "requires_safety_checker": False,
            "scheduler": ["diffusers", scheduler_cls], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


FAMILIES = {
    "sd1": {  # runwayml/stable-diffusion-v1-5
        "model_index.json": sd_index("PNDMScheduler"),
        "unet/config.json": {**UNET_COMMON, **SD_BLOCKS, "attention_head_dim": 8, "cross_attention_dim": 768,
                             "use_linear_projection": False, "upcast_attention": False, "sample_size": 64},
        "vae/config.json": vae(512),
        "text_encoder/config.json": CLIP_L,
        "scheduler/scheduler_config.json": {"_class_name": "PNDMScheduler", **SCHEDULE},
        "tokenizer": "<|endoftext|>",
    },
    "sd2": {  # stabilityai/stable-diffusion-2-1-base
        "model_index.json": sd_index("PNDMScheduler"),
        "unet/config.json": sd2_unet(64, upcast=False),
        "vae/config.json": vae(512),
        "text_encoder/config.json": OPENCLIP_H,
        "scheduler/scheduler_config.json": {"_class_name": "PNDMScheduler", **SCHEDULE, "prediction_type": "epsilon"},
        "tokenizer": "!",
    },
    "sd2-v": {  # stabilityai/stable-diffusion-2-1 (768 px, v-prediction)
        "model_index.json": sd_index("DDIMScheduler"),
        "unet/config.json": sd2_unet(96, upcast=True),
        "vae/config.json": vae(768),
        "text_encoder/config.json": OPENCLIP_H,
        "scheduler/scheduler_config.json": {"_class_name": "DDIMScheduler", **SCHEDULE,
                                            "prediction_type": "v_prediction"},
        "tokenizer": "!",
    },
    "sdxl": {  # stabilityai/stable-diffusion-xl-base-1.0
        "model_index.json": {
            "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
            "feature_extractor": [None, None], "image_encoder": [None, None],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
        "unet/config.json": {
            **UNET_COMMON, "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
            "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
            "cross_attention_norm": None, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "encoder_hid_dim": None, "encoder_hid_dim_type": None, "mid_block_only_cross_attention": None,
            "mid_block_type": "UNetMidBlock2DCrossAttn", "num_attention_heads": None,
            "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
            "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
            "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
            "use_linear_projection": True},
        "vae/config.json": vae(1024, force_upcast=True, scaling_factor=0.13025),
        "text_encoder/config.json": CLIP_L,
        "text_encoder_2/config.json": OPENCLIP_BIGG,
        "scheduler/scheduler_config.json": {
            "_class_name": "EulerDiscreteScheduler", **SCHEDULE, "interpolation_type": "linear",
            "prediction_type": "epsilon", "sample_max_value": 1.0, "timestep_spacing": "leading",
            "use_karras_sigmas": False},
        "tokenizer": "<|endoftext|>",
        "tokenizer_2": "!",
    },
}


def write_tokenizer(folder: Path, pad: str, copy_files: bool) -> None:
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=1) + "\n")
    cfg = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(cfg, indent=1) + "\n")
    for name in ("vocab.json", "merges.txt"):
        if copy_files:
            shutil.copyfile(TOKENIZER_SRC / name, folder / name)
        else:
            (folder / name).unlink(missing_ok=True)


def main(copy_tokenizer_files: bool = False) -> None:
    for family, files in FAMILIES.items():
        root = OUT / family
        for rel, value in files.items():
            if rel.startswith("tokenizer"):
                write_tokenizer(root / rel, value, copy_tokenizer_files)
            else:
                atomic_write_text(root / rel, json.dumps(value, indent=2, sort_keys=True) + "\n")
        print(f"wrote {root.relative_to(ROOT)}")


if __name__ == "__main__":
    main(copy_tokenizer_files="--copy-tokenizer-files" in sys.argv[1:])
