"""Train the tiny demo base (builtin:shapes) from scratch on generated shapes, on CPU.

    python scripts/train_demo_base.py --out trainer/assets/shapes_base --seed 4 --threads 2

(the shipped base; 51 min on 2 idle CPU cores). Stages: (1) a small AutoencoderKL on shapes and
textures, its latent tied to the image colours by a linear read-out; (2) a frozen, randomly
initialised CLIP text encoder with the project's CLIP tokenizer; (3) a small UNet2DConditionModel on
cached latents, with EMA and 10% empty captions for classifier-free guidance, and a probe of how much
it uses colour and shape words. The result is an ordinary StableDiffusionPipeline folder of
safetensors; <out>/train_log.json records settings, times, losses and the probe.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.run.atomic import atomic_write_text  # noqa: E402
from trainer.demo import shapes  # noqa: E402


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=shapes.RES,
                         mid_block_add_attention=False)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=49408, max_position_embeddings=77, projection_dim=64,
                         hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModel(cfg)


def build_unet(latent_size: int, heads: tuple[int, int] = (2, 4)):
    from diffusers import UNet2DConditionModel

    # diffusers' attention_head_dim is the number of heads (a legacy name); 32-wide heads run ~20%
    # faster on CPU than 8-wide ones and learn as well at this size
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=heads, norm_num_groups=32)


def sd_schedule_kwargs() -> dict:
    # Stable Diffusion's noise schedule, so the demo base trains like a real SD1 base
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_vae(vae, steps: int, batch: int, lr: float, seed: int, n_images: int, crop: int,
              rgb_weight: float = 1.0) -> dict:
    images = shapes.to_tensor_batch(shapes.vae_examples(n_images, seed + 1))
    # ties the latent to the image's colours: a 1×1 map from the 4 latent channels must give the 4×4
    # average colour of the pixels above it (SD's own latents are close to such a linear map). Without it
    # the VAE hid colour in a code no linear read-out recovers, and the UNet never learnt colour words.
    to_rgb = torch.nn.Conv2d(4, 3, 1)
    opt = torch.optim.AdamW([*vae.parameters(), *to_rgb.parameters()], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    g = torch.Generator().manual_seed(seed + 2)
    vae.train()
    losses, rgb_losses = [], []
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        if crop < x.shape[-1]:
            # the VAE is fully convolutional (no mid-block attention): crops teach it the same local
            # reconstruction at a fraction of the cost; crop corners on the latent grid (multiples of 4)
            oy, ox = (torch.randint(0, (x.shape[-1] - crop) // 4 + 1, (2,), generator=g) * 4).tolist()
            x = x[..., oy:oy + crop, ox:ox + crop]
        post = vae.encode(x).latent_dist
        # a little fixed noise instead of the learned variance: sampled latents stalled training
        z = post.mean + 0.05 * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        rgb_loss = F.mse_loss(to_rgb(post.mean), F.avg_pool2d(x, 4))
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean() + rgb_weight * rgb_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        rgb_losses.append(rgb_loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                f"rgb {sum(rgb_losses[-100:]) / len(rgb_losses[-100:]):.4f}")
    vae.eval()
    return {"final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
            "final_rgb_loss": sum(rgb_losses[-50:]) / max(len(rgb_losses[-50:]), 1), "rgb_weight": rgb_weight}


@torch.no_grad()
def vae_recon_mse(vae, images) -> float:
    x = shapes.to_tensor_batch(images)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return F.mse_loss(rec, x).item()


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_latents(vae, examples, cache: Path | None, seed: int, n: int) -> torch.Tensor:
    """VAE means of the training images; with `cache`, kept in a safetensors file between runs."""
    from safetensors.torch import load_file, save_file

    key = {"seed": str(seed), "images": str(n), "vae_mean_weight": f"{float(vae.quant_conv.weight.sum()):.8e}"}
    if cache and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            if f.metadata() == key:
                log(f"latents from {cache}")
                return load_file(str(cache))["latents"]
    chunks = []
    for i in range(0, len(examples), 256):
        chunks.append(vae.encode(shapes.to_tensor_batch([im for im, _ in examples[i:i + 256]])).latent_dist.mean)
        if i % 4096 == 0:
            log(f"encoding latents {i}/{len(examples)}")
    lat = torch.cat(chunks)
    if cache:
        save_file({"latents": lat.contiguous()}, str(cache), metadata=key)
    return lat


def caption_probe(vae, tokenizer, seed: int, scaling: float, n: int = 48):
    """How much the model uses its caption: denoising loss on held-out images with their own caption
    against the same caption with another colour word (or shape word). A model that ignores the
    caption scores the same on both; the gap is what colour/shape accuracy grows from."""
    rng = np.random.default_rng(seed)
    specs = [shapes.random_shape_spec(rng) for _ in range(n)]
    with torch.no_grad():
        x0 = vae.encode(shapes.to_tensor_batch([shapes.render_shape(sp) for sp in specs])).latent_dist.mean
    x0 = x0 * scaling
    colours, kinds = list(shapes.COLOURS), list(shapes.SHAPES)
    true_caps = [sp.caption for sp in specs]
    wrong_colour = [sp.caption.replace(f" {sp.colour} ", f" {colours[(colours.index(sp.colour) + 1) % 4]} ")
                    for sp in specs]
    wrong_shape = [sp.caption.replace(f" {sp.shape} ", f" {kinds[(kinds.index(sp.shape) + 1) % 3]} ")
                   for sp in specs]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    from diffusers import DDPMScheduler

    t = torch.linspace(200, 950, n).long()
    xt = DDPMScheduler(**sd_schedule_kwargs()).add_noise(x0, noise, t)
    ids = {k: tokenize(tokenizer, caps) for k, caps in
           (("true", true_caps), ("wrong_colour", wrong_colour), ("wrong_shape", wrong_shape))}

    @torch.no_grad()
    def measure(unet, text_encoder) -> dict[str, float]:
        out = {}
        for k, tok in ids.items():
            pred = unet(xt, t, encoder_hidden_states=text_encoder(tok)[0]).sample
            out[k] = F.mse_loss(pred, noise).item()
        return {"loss": round(out["true"], 5), "colour_gap": round(out["wrong_colour"] - out["true"], 5),
                "shape_gap": round(out["wrong_shape"] - out["true"], 5)}
    return measure


def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet) -> None:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler(**sd_schedule_kwargs()), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="pipeline folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-crop", type=int, default=32, help="train the VAE on random crops of this size")
    ap.add_argument("--unet-steps", type=int, default=2200)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-minutes", type=float, default=0.0,
                    help="stop the UNet stage after this many minutes (0 = run all --unet-steps)")
    ap.add_argument("--images", type=int, default=12000, help="generated training images for the UNet")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--save-every", type=int, default=0, help="also save the pipeline every N UNet steps")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="continue from a pipeline folder this script wrote (skips the VAE stage)")
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--fresh-unet", action="store_true",
                    help="with --init-from: keep its VAE and text encoder, train a new UNet")
    ap.add_argument("--text-encoder-lr", type=float, default=0.0,
                    help="train the text encoder's transformer with the UNet at this rate (0 = frozen; "
                         "measured: 1e-3 made the UNet take up colour words more slowly, not faster)")
    ap.add_argument("--latent-cache", type=Path, default=None,
                    help="keep the encoded training latents in this file, for repeated runs")
    ap.add_argument("--probe-every", type=int, default=100,
                    help="measure how much the model uses colour and shape words every N steps")
    ap.add_argument("--short", action="store_true", help="a handful of steps on little data (for tests)")
    args = ap.parse_args(argv)
    if args.short:
        args.vae_steps, args.unet_steps, args.images, args.vae_batch, args.unet_batch = 3, 3, 64, 4, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    from diffusers import DDPMScheduler
    from trainer.models.base import load_clip_tokenizer

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["torch_threads"] = torch.get_num_threads()

    if args.init_from:
        # continue from an earlier run: its VAE and text encoder as they are, its UNet as the start
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        vae = AutoencoderKL.from_pretrained(str(args.init_from / "vae"))
        vae_stats = {"init_from": str(args.init_from), "steps": 0}
    else:
        vae = build_vae()
        vae_stats = train_vae(vae, args.vae_steps, args.vae_batch, lr=2e-3, seed=args.seed,
                              n_images=min(args.images, 8000), crop=args.vae_crop)
    vae.requires_grad_(False)
    t_vae = time.time() - t0
    recon = {"shapes": vae_recon_mse(vae, [im for im, _ in shapes.reg_examples(24, seed=99)]),
             "concept": vae_recon_mse(vae, [im for im, _ in shapes.concept_examples(16, seed=99)])}
    log(f"vae done in {t_vae:.0f}s, recon mse {recon}")
    if not args.init_from:
        vae.save_pretrained(str(args.out / "vae"), safe_serialization=True)  # a later crash keeps it


    tokenizer = load_clip_tokenizer()
    text_encoder = (CLIPTextModel.from_pretrained(str(args.init_from / "text_encoder")) if args.init_from
                    else build_text_encoder()).eval().requires_grad_(False)

    examples = shapes.base_examples(args.images, args.seed + 3)
    captions = sorted({c for _, c in examples})
    cap_ids = tokenize(tokenizer, [""] + captions)  # row 0: the empty caption
    cap_index = torch.tensor([captions.index(c) + 1 for _, c in examples])
    lat = encode_latents(vae, examples, args.latent_cache, args.seed, args.images)
    scaling = float(vae.config.scaling_factor) if args.init_from else float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    lat = lat * scaling
    log(f"cached {len(lat)} latents {tuple(lat.shape[1:])}, {len(captions)} captions, scaling {scaling:.3f}")

    if args.init_from and not args.fresh_unet:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(args.init_from / "unet"))
    else:
        unet = build_unet(lat.shape[-1])
    ema = copy.deepcopy(unet).requires_grad_(False)
    train_te = args.text_encoder_lr > 0
    if train_te:
        # the idea: a trained encoder's padding tokens could summarise the caption for cross-attention
        text_model = getattr(text_encoder, "text_model", text_encoder)  # transformers 5 flattened it
        text_model.encoder.requires_grad_(True)
        text_model.final_layer_norm.requires_grad_(True)
        text_encoder.train()
    ema_te = copy.deepcopy(text_encoder).requires_grad_(False).eval()
    held_out = caption_probe(vae, tokenizer, args.seed + 5, scaling)

    warmup = min(100, max(args.unet_steps // 10, 1))
    noise_sched = DDPMScheduler(**sd_schedule_kwargs())
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    groups = [{"params": list(unet.parameters()), "base_lr": args.unet_lr}]
    if train_te:
        groups.append({"params": [q for q in text_encoder.parameters() if q.requires_grad],
                       "base_lr": args.text_encoder_lr})
    for group in groups:
        group["lr"] = group["base_lr"] / warmup
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    trainable = [q for group in groups for q in group["params"]]

    def lr_factor(step: int) -> float:
        # warmup, then cosine down to 10% over the run; with a time limit, over whichever ends first
        progress = step / max(args.unet_steps, 1)
        if args.unet_minutes:
            progress = max(progress, (time.time() - t_unet0) / (args.unet_minutes * 60))
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))
    g = torch.Generator().manual_seed(args.seed + 4)
    unet.train()
    losses: list[float] = []
    probes: list[dict] = []
    t_unet0 = time.time()
    step = 0
    for step in range(args.unet_steps):
        idx = torch.randint(0, len(lat), (args.unet_batch,), generator=g)
        x0 = lat[idx]
        ci = cap_index[idx].clone()
        ci[torch.rand(len(ci), generator=g) < 0.1] = 0  # empty caption, for classifier-free guidance
        with torch.set_grad_enabled(train_te):
            cond = text_encoder(cap_ids[ci])[0]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        # min-SNR-5 weighting: converges faster than plain MSE on epsilon
        w = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step + 1)
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, q in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(q, 1 - decay)
            if train_te:
                for pe, q in zip(ema_te.parameters(), text_encoder.parameters()):
                    pe.lerp_(q, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step}/{args.unet_steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"{(time.time() - t_unet0) / (step + 1):.2f}s/step")
        if args.probe_every and step % args.probe_every == 0:
            probes.append({"step": step, **held_out(ema, ema_te)})
            log(f"caption probe {probes[-1]}")
        if args.save_every and step and step % args.save_every == 0:
            save_pipeline(args.out, vae, ema_te, tokenizer, ema)
            log(f"saved pipeline at step {step}")
        if args.unet_minutes and time.time() - t_unet0 > args.unet_minutes * 60:
            log(f"time limit reached at step {step}")
            break
    probes.append({"step": step, **held_out(ema, ema_te)})
    log(f"caption probe {probes[-1]}")
    text_encoder = ema_te.eval()

    save_pipeline(args.out, vae, text_encoder, tokenizer, ema)
    wall = time.time() - t0
    n_params = {"vae": sum(p.numel() for p in vae.parameters()),
                "unet": sum(p.numel() for p in unet.parameters()),
                "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
    train_log = {
        "settings": settings, "params": n_params, "vae_scaling_factor": scaling,
        "vae": {**vae_stats, "recon_mse": recon, "seconds": round(t_vae, 1)},
        "unet": {"steps_done": step + 1, "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
                 "seconds": round(time.time() - t_unet0, 1), "ema_decay_max": 0.995, "lr": args.unet_lr, "lr_schedule": "warmup 100 steps, cosine to 10% (by steps or time)",
                 "min_snr_gamma": 5.0, "empty_caption_share": 0.1, "caption_probe": probes},
        "text_encoder": (f"random init (seeded), transformer trained with the UNet at lr {args.text_encoder_lr} "
                         "(token embeddings frozen), EMA saved; real CLIP BPE tokenizer" if train_te
                         else "frozen, random init (seeded), real CLIP BPE tokenizer"),
        "wall_seconds": round(wall, 1),
        "torch": torch.__version__,
    }
    if args.init_from and (args.init_from / "train_log.json").is_file():
        # a continued base carries the log of the run it started from, so its whole history is recorded
        train_log["init_from_log"] = json.loads((args.init_from / "train_log.json").read_text())
    atomic_write_text(args.out / "train_log.json", json.dumps(train_log, indent=2) + "\n")
    log(f"done in {wall:.0f}s → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
